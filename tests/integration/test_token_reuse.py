"""An adapter asks its credential for a token once for many concurrent requests, and again
only when the token nears its end (tenants/base.py `Adapter.token`), against the sandbox's
token endpoint."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from coexist.tenants.auth import TenantCredentials, credential
from coexist.tenants.base import TOKEN_REUSE_S
from coexist.tenants.graph import GraphAdapter
from tests.integration.test_connection_errors import target


class Counting:
    """The real credential, counting the token fetches asked of it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fetches = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        self.fetches += 1
        return await self.inner.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        await self.inner.close()


def test_concurrent_requests_share_one_token_fetch(conn: dict[str, Any]) -> None:
    """Forty token asks at once (a pass's start) reach the credential once, not forty times
    (azure-identity's async credential fetched one token each); a token with less than
    TOKEN_REUSE_S left is asked for again."""
    made: list[Counting] = []

    def factory(ep: Any, **kwargs: Any) -> Counting:
        made.append(Counting(credential(ep, **kwargs)))
        return made[-1]

    async def go() -> None:
        creds = TenantCredentials(factory)
        try:
            async with GraphAdapter(target(conn), label="target", credentials=creds) as graph:
                tokens = await asyncio.gather(*(graph.token() for _ in range(40)))
                assert len(set(tokens)) == 1 and made[0].fetches == 1
                await asyncio.gather(*(graph.send("GET", "users?$top=1") for _ in range(5)))
                assert made[0].fetches == 1
                # The kept token near its end: the next request fetches a new one.
                kept = graph._token
                assert kept is not None
                graph._token = kept._replace(expires_on=int(time.time() + TOKEN_REUSE_S - 1))
                await graph.send("GET", "users?$top=1")
                assert made[0].fetches == 2
        finally:
            await creds.aclose()

    asyncio.run(go())
