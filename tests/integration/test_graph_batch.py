"""Graph $batch over HTTPS: mixed inner results, dependsOn, the 20-request cap, inner 429s.

msgraph-core's BatchRequestContent imports the undeclared `deprecated` package, so
batches go through httpx here and inner bodies are parsed with msgraph-sdk's
models through kiota's JSON parse node (what the SDK itself would do).
"""

from __future__ import annotations

import json
from typing import Any

from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user_collection_response import UserCollectionResponse

from coexist.sandbox import Sandbox, seed
from coexist.sandbox.model import Settings
from tests.clients import graph_http


def parse(body: dict[str, Any], model: Any) -> Any:
    node = JsonParseNodeFactory().get_root_parse_node("application/json", json.dumps(body).encode())
    return node.get_object_value(model)


def post_batch(conn: dict[str, Any], requests: list[dict[str, Any]]) -> Any:
    with graph_http(conn, "source") as http:
        return http.post("$batch", json={"requests": requests})


def test_batch_mixed_results_and_depends_on(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """One 200 batch carries a 200 list, a 404, a 204 PATCH and a 424 for a failed dependency."""
    user = next(iter(sandbox.world.source.users.values()))
    r = post_batch(
        conn,
        [
            {"id": "1", "method": "GET", "url": "/users?$top=2&$select=id,displayName"},
            {"id": "2", "method": "GET", "url": "users/missing@fabrikam.example"},
            {
                "id": "3",
                "method": "PATCH",
                "url": f"/users/{user.id}",
                "headers": {"Content-Type": "application/json"},
                "body": {"usageLocation": "CH"},
            },
            {"id": "4", "method": "GET", "url": f"/users/{user.id}", "dependsOn": ["3"]},
            {"id": "5", "method": "GET", "url": "/users/nobody", "dependsOn": ["2"]},
        ],
    )
    assert r.status_code == 200
    by_id = {x["id"]: x for x in r.json()["responses"]}
    assert [x["id"] for x in r.json()["responses"]] == ["1", "2", "3", "4", "5"]
    assert by_id["1"]["status"] == 200
    page = parse(by_id["1"]["body"], UserCollectionResponse)
    assert len(page.value) == 2 and page.odata_next_link.startswith(conn["base_url"])
    assert by_id["2"]["status"] == 404
    err = parse(by_id["2"]["body"], ODataError)
    assert err.error.code == "Request_ResourceNotFound"
    assert by_id["3"]["status"] == 204 and "body" not in by_id["3"]
    assert by_id["4"]["status"] == 200
    assert by_id["5"]["status"] == 424
    assert user.usage_location == "CH"


def test_batch_over_twenty_requests_is_rejected(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """21 inner requests fail the whole batch with Graph's 400 error body."""
    reqs = [{"id": str(i), "method": "GET", "url": "/users?$top=1"} for i in range(21)]
    r = post_batch(conn, reqs)
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"code", "message", "innerError"}
    assert post_batch(conn, reqs[:20]).status_code == 200


def test_batch_inner_throttling(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Under published limits each inner request is admitted alone: 429 + Retry-After inside a 200."""
    # time_scale tiny: the drained bucket does not refill during the test.
    world = seed.generate(7, 40, Settings(profile="published", time_scale=1e-6))
    sandbox.reset(world)
    conn = sandbox.connection
    assert sandbox.ctx is not None
    tenant = sandbox.world.source
    key = (tenant.tenant_id, tenant.apps[0].client_id)
    assert sandbox.ctx.limiter.admit("directory_read", key, cost=3499) is None  # one unit left
    r = post_batch(
        conn, [{"id": str(i), "method": "GET", "url": "/users?$top=1"} for i in range(3)]
    )
    assert r.status_code == 200
    statuses = [x["status"] for x in r.json()["responses"]]
    assert statuses == [200, 429, 429]
    throttled = r.json()["responses"][1]
    assert float(throttled["headers"]["Retry-After"]) > 0
    assert parse(throttled["body"], ODataError).error.code == "TooManyRequests"


def test_batch_needs_a_valid_token(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """The batch itself answers 401 InvalidAuthenticationToken for a bad bearer token."""
    with graph_http(conn, "source", token="not-a-jwt") as http:
        r = http.post("$batch", json={"requests": [{"id": "1", "method": "GET", "url": "/users"}]})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"
