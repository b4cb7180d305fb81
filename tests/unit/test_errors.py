"""The error tree redacts secrets and carries the next step."""

from __future__ import annotations

from coexist.errors import RemoteError, TransientError, redact


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
