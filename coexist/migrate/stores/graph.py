"""What both Microsoft Graph stores share: the mailbox they address, the delta-reset codes,
the mail API's well-known folder names."""

from __future__ import annotations

from dataclasses import dataclass

from coexist.errors import RemoteError
from coexist.tenants.graph import GraphAdapter

# Codes by which Graph says it forgot a delta sync state, for both stores (graph/errors "Code
# property": resyncRequired, syncStateNotFound; SyncStateNotFound / SyncStateInvalid as
# Outlook sends them, microsoft-graph-docs#2350; delta-query-overview), compared without
# case; any 410 Gone too.
SYNC_STATE_LOST = frozenset({"syncstatenotfound", "syncstateinvalid", "resyncrequired"})
# Each API's own name for the default folders, as the folder mapping calls them (the mail
# API's well-known names, resources/mailfolder; plus the PIM defaults).
MAIL_WELL_KNOWN = ("inbox", "sentitems", "drafts", "deleteditems", "junkemail", "archive",
                   "outbox")  # fmt: skip


# The journal's folder_state kind under which a user's import/export mailbox id is kept, one
# row per side (folder_id "source" / "target"; token: the id, watermark: the user id).
MAILBOX_KIND = "io-mailbox"
# The same for the default folders' display names (token: JSON well-known name -> [folder
# class, display name]; watermark: the user id), `graph_io.names_hold`.
NAMES_KIND = "io-names"


def sync_state_lost(exc: RemoteError) -> bool:
    """A delta answer saying the saved state is gone: start the round over."""
    return exc.status == 410 or str(exc.code or "").lower() in SYNC_STATE_LOST


@dataclass(frozen=True)
class Box:
    """One mailbox on one side: the Graph adapter, user id and import/export mailbox id."""

    graph: GraphAdapter
    user_id: str
    mailbox_id: str

    def path(self, suffix: str) -> str:
        return f"admin/exchange/mailboxes/{self.mailbox_id}/{suffix}"


async def mailbox_id(graph: GraphAdapter, user_id: str) -> str:
    # mailbox-import-export-api-overview: the API takes `primaryMailboxId` from
    # GET /users/{id}/settings/exchange, not the user id.
    data = await graph.send("GET", f"users/{user_id}/settings/exchange")
    return str(data["primaryMailboxId"])
