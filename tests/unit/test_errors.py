"""The error tree redacts secrets and carries the next step."""

from __future__ import annotations

from coexist.errors import (
    InvalidRequest,
    NotFound,
    NotReady,
    RemoteError,
    TransientError,
    redact,
)
from coexist.tenants.graph import parse_error


def test_redact_removes_bearer_tokens_jwts_and_secrets() -> None:
    """Tokens, JWTs, client secrets and passwords never survive into a message."""
    text = (
        "Authorization: Bearer abc.def.ghi client_secret=s3cr3t&x=1 "
        '{"password": "hunter2"} eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3In0.sig'
    )
    clean = redact(text)
    for secret in ("abc.def.ghi", "s3cr3t", "hunter2", "eyJhbGciOiJSUzI1NiJ9"):
        assert secret not in clean


def test_errors_carry_fields_and_next_step() -> None:
    """A remote error keeps service, code and status; its text shows the next step."""
    err = RemoteError("boom", service="graph", code="X", status=400, next_step="coexist retry")
    assert err.to_dict()["code"] == "X"
    assert "next: coexist retry" in str(err)
    assert TransientError("slow", service="exchange", retry_after=2.5).retry_after == 2.5


def graph_error(status: int, code: str, message: str) -> RemoteError:
    return parse_error(status, {"error": {"code": code, "message": message}}, {}, what="GET x")


def test_graph_answers_that_mean_wait_are_not_ready() -> None:
    """A mailbox Graph does not serve yet and the DualWrite refusal wait; other 404/400 do not."""
    mailbox = graph_error(404, "MailboxNotEnabledForRESTAPI", "The mailbox is either inactive…")
    assert isinstance(mailbox, NotReady) and mailbox.reason and "MBX" not in mailbox.reason
    migrating = graph_error(
        400,
        "Request_BadRequest",
        "Unable to update the specified properties for on-premises mastered Directory Sync "
        "objects or objects currently undergoing migration.",
    )
    assert isinstance(migrating, NotReady)
    assert isinstance(graph_error(404, "Request_ResourceNotFound", "gone"), NotFound)
    external = graph_error(
        400,
        "Request_BadRequest",
        "Unable to update the specified properties for objects that have originated within an "
        "external service.",
    )
    assert isinstance(external, InvalidRequest)
