"""The fallback mover's identity and restart rules as pure functions."""

from __future__ import annotations

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TransientError,
)
from coexist.migrate.items import (
    IDENTITY_PROP,
    odata_string,
    stamp_filter,
    stamp_of,
    update_conflict,
)
from coexist.migrate.stores.graph import sync_state_lost


def test_sync_state_lost_by_any_documented_code_or_410() -> None:
    """410, SyncStateNotFound, SyncStateInvalid and resyncRequired (any case) restart a round."""
    for code, status in (
        ("SyncStateNotFound", 410),
        ("syncStateNotFound", 400),
        ("SyncStateInvalid", 410),
        ("resyncRequired", 410),
        (None, 410),
    ):
        assert sync_state_lost(InvalidRequest("x", service="graph", code=code, status=status)), code
    assert sync_state_lost(NotFound("x", service="graph", code="syncStateNotFound", status=404))
    assert not sync_state_lost(NotFound("x", service="graph", code="ErrorItemNotFound", status=404))
    assert not sync_state_lost(
        InvalidRequest("x", service="graph", code="ErrorInvalidUrlQuery", status=400)
    )


def test_any_4xx_but_401_on_an_update_is_the_items_conflict() -> None:
    """404, 409, 400 and 403 are the item's conflict; a rejected token or a throttle is not."""
    assert update_conflict(NotFound("x", service="graph", status=404))
    assert update_conflict(Conflict("x", service="graph", status=409))
    assert update_conflict(InvalidRequest("x", service="graph", status=400))
    assert update_conflict(InvalidRequest("x", service="graph", status=412))
    assert update_conflict(PermissionDenied("x", service="graph", status=403))
    assert not update_conflict(AuthenticationError("x", service="graph", status=401))
    assert not update_conflict(TransientError("x", service="graph", status=429))
    assert not update_conflict(TransientError("x", service="graph", status=503))


def test_stamp_filter_quotes_and_stamp_of_reads_back() -> None:
    """The stamp filter doubles quotes in ids; stamp_of finds the stamp whatever its case."""
    assert odata_string("it's") == "'it''s'"
    assert "ep/value eq 'a''b'" in stamp_filter("a'b")
    upper = IDENTITY_PROP.replace("5b1c2a8e", "5B1C2A8E")
    assert stamp_of({"singleValueExtendedProperties": [{"id": upper, "value": "s1"}]}) == "s1"
    assert stamp_of({"id": "x"}) is None
    assert stamp_of({"singleValueExtendedProperties": []}) is None
