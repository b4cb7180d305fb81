"""Where the Graph adapter sends a request, whatever link it is given."""

from __future__ import annotations

import asyncio

from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.graph import GraphAdapter

EP = TenantEndpoint("t1", "c1", graph_url="https://127.0.0.1:4443/v1.0", client_secret="x")


def test_links_go_to_the_configured_endpoint() -> None:
    """A saved deltaLink from another origin is rebased onto the configured Graph endpoint
    (the token never leaves it); relative paths are joined; other URLs are left alone."""

    async def urls() -> list[str]:
        async with GraphAdapter(EP) as graph:
            return [
                graph.url("users/u1/messages"),
                graph.url("https://127.0.0.1:39999/v1.0/users/u1/x/delta?$deltatoken=abc"),
                graph.url("https://127.0.0.1:4443/v1.0/users?$skiptoken=1"),
                graph.url("https://outlook.example/api/gbeta/Mailboxes('m')/importItem"),
            ]

    assert asyncio.run(urls()) == [
        "https://127.0.0.1:4443/v1.0/users/u1/messages",
        "https://127.0.0.1:4443/v1.0/users/u1/x/delta?$deltatoken=abc",
        "https://127.0.0.1:4443/v1.0/users?$skiptoken=1",
        "https://outlook.example/api/gbeta/Mailboxes('m')/importItem",
    ]
