"""A path the sandbox does not serve answers as Graph answers an unknown segment, so it is
never mistaken for a Graph 404 of a missing object (the contract walker relies on it)."""

from __future__ import annotations

from typing import Any

from coexist.sandbox import Sandbox
from tests.clients import graph_http


def _error(body: Any) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["message"]


def test_unserved_segment_is_a_400_naming_it(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Unknown segments answer 400 BadRequest "Resource not found for the segment 'x'."."""
    user = next(iter(sandbox.world.source.users.values()))
    with graph_http(conn, "source") as http:
        for path, segment in (
            ("noSuchSet", "noSuchSet"),
            (f"users/{user.id}/manager", "manager"),
            (f"users/{user.id}/todo", "todo"),
            (f"users/{user.id}/mailFolders/inbox/nothingHere/x", "nothingHere"),
            # A function call is never an id: not a 404 for a group named "delta()".
            ("groups/delta()", "delta()"),
            (f"users/{user.id}/contacts/delta()", "delta()"),
        ):
            resp = http.get(path)
            assert resp.status_code == 400, (path, resp.text)
            assert _error(resp.json()) == (
                "BadRequest",
                f"Resource not found for the segment '{segment}'.",
            )


def test_missing_object_and_wrong_method_stay_distinct(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A missing object is still Graph's 404; a served path with another method is 405."""
    with graph_http(conn, "source") as http:
        missing = http.get("users/00000000-0000-4000-8000-00000000dead")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "Request_ResourceNotFound"
        assert http.delete("subscribedSkus").status_code == 405
        mailbox = next(u for u in sandbox.world.source.users.values() if u.is_mailbox)
        assert http.get(f"users/{mailbox.id}/mailFolders/delta()").status_code == 200


def test_batch_inner_unserved_segment(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Inside $batch the same answer comes back as the inner response."""
    user = next(iter(sandbox.world.source.users.values()))
    with graph_http(conn, "source") as http:
        body = {"requests": [{"id": "1", "method": "GET", "url": f"/users/{user.id}/photo"}]}
        inner = http.post("$batch", json=body).json()["responses"][0]
    assert inner["status"] == 400
    assert _error(inner["body"]) == ("BadRequest", "Resource not found for the segment 'photo'.")
