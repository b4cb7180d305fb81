"""Graph query options the directory refuses, over HTTPS with the real clients: a `$filter`
clause that names no property and a `$count` that is neither true nor false (issue 10)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.users_request_builder import UsersRequestBuilder

from coexist.sandbox import Sandbox
from tests.clients import graph_client, graph_http

Query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters
GRAPH_ERROR_KEYS = {"code", "message", "innerError"}


def test_filter_comparing_literals_is_refused(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """`displayName eq 'x' or 1 eq 1` used to list every user; Graph answers 400, on /users
    and /groups, through msgraph-sdk and raw httpx alike."""

    async def run() -> None:
        client = graph_client(conn, "source")
        cfg = RequestConfiguration(query_parameters=Query(filter="displayName eq 'x' or 1 eq 1"))
        with pytest.raises(ODataError) as err:
            await client.users.get(request_configuration=cfg)
        assert err.value.response_status_code == 400
        assert err.value.error is not None and err.value.error.code == "Request_UnsupportedQuery"

    asyncio.run(run())
    with graph_http(conn, "source") as http:
        for path in ("users", "groups"):
            for text in ("displayName eq 'x' or 1 eq 1", "true", "'a' eq 'a'"):
                r = http.get(path, params={"$filter": text})
                assert r.status_code == 400, (path, text, r.text)
                assert set(r.json()["error"]) == GRAPH_ERROR_KEYS
        # The same filter with a property on each side is served (nobody is called 'x').
        ok = http.get("users", params={"$filter": "displayName eq 'x' or mail eq 'y@z'"})
    assert ok.status_code == 200 and ok.json()["value"] == []


def test_bad_count_value_is_refused(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """`$count=maybe` used to answer 200; Graph answers 400 BadRequest naming the value, with
    or without ConsistencyLevel, on users, groups and group members."""
    eventual = {"ConsistencyLevel": "eventual"}
    with graph_http(conn, "source") as http:
        group = http.get("groups", params={"$top": "1"}).json()["value"][0]["id"]
        for path in ("users", "groups", f"groups/{group}/members"):
            for headers in ({}, eventual):
                r = http.get(path, params={"$count": "maybe"}, headers=headers)
                assert r.status_code == 400, (path, r.text)
                error = r.json()["error"]
                assert set(error) == GRAPH_ERROR_KEYS
                assert error["code"] == "BadRequest"
                assert error["message"] == "'maybe' is not a valid count option."
            good = http.get(path, params={"$count": "true"}, headers=eventual)
            assert good.status_code == 200 and "@odata.count" in good.json()
