"""A real Dovecot that does not advertise UNSELECT (RFC 3691): the adapter leaves a selected
folder before its STATUS by its fallback (an EXAMINE of INBOX, RFC 3501 6.3.2), and counts
what other connections appended meanwhile. Dovecot's `imap_capability` setting replaces the
advertised list with the session Dovecot's own list minus UNSELECT. Dovecot still answers
an UNSELECT it does not advertise, so the commands the server read (its rawlog,
`DovecotServer.client_lines`) show that the fallback ran and no UNSELECT was sent."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient

from coexist.migrate.stores.imap import ImapStore
from coexist.sandbox.dovecot import running_dovecot
from coexist.tenants.imap import (
    ImapConnections,
    ImapEndpoint,
    ImapSession,
    NewMessage,
    Password,
    tls_context,
)
from coexist.tenants.protocols import MIME, MessageState, Payload
from tests.dovecot import DovecotServer, ImapUser
from tests.integration.test_imap_store import message

# A command line of the rawlog: "<time> <tag> [UID] <COMMAND> [<mailbox>]" (an APPEND's
# literal lines follow it, never shaped so).
COMMAND = re.compile(r'^\d+\.\d+ [A-Za-z]+\d+ (?:UID )?([A-Z]+)(?=\s|$)(?: "?([^" ]*))?')


def advertised(server: DovecotServer) -> list[str]:
    """What a logged-in client is told the server can do (CAPABILITY after LOGIN)."""
    user = server.new_user("caps")
    with IMAPClient(server.host, server.tls_port, ssl_context=tls_context(server.ca_file)) as c:
        c.login(user.login, user.password)
        return [cap.decode() for cap in c.capabilities()]


@pytest.fixture(scope="module")
def no_unselect(dovecot: DovecotServer) -> Iterator[DovecotServer]:
    """A second Dovecot advertising the session one's capabilities without UNSELECT."""
    caps = [c for c in advertised(dovecot) if c.upper() != "UNSELECT"]
    with running_dovecot(
        name="coexist-no-unselect", imap_capability=" ".join(caps), rawlog=True
    ) as server:
        yield server


@pytest.fixture(scope="module")
def with_unselect() -> Iterator[DovecotServer]:
    """A Dovecot as the session's (UNSELECT advertised), with a rawlog: the control."""
    with running_dovecot(name="coexist-unselect", rawlog=True) as server:
        yield server


def endpoint_of(server: DovecotServer) -> ImapEndpoint:
    return ImapEndpoint(server.host, server.tls_port, "tls", server.ca_file)


def commands_of(server: DovecotServer, user: ImapUser) -> list[list[str]]:
    """Per connection of `user`, the commands the server read: "VERB mailbox", and
    "LIST-STATUS" for a LIST that returns every folder's STATUS (RFC 5819)."""
    out = []
    for lines in server.client_lines(user):
        found = [(COMMAND.match(line), line) for line in lines]
        out.append([_command(m, line) for m, line in found if m])
    return out


def _command(m: re.Match[str], line: str) -> str:
    if m.group(1) == "LIST" and "RETURN (STATUS" in line.upper():
        return "LIST-STATUS"
    return f"{m.group(1)} {m.group(2) or ''}".strip()


def counted(command: str, folder: str | None) -> bool:
    """Whether `command` reads the count of `folder`: its STATUS, or a LIST-STATUS."""
    return command in (f"STATUS {folder}", "LIST-STATUS")


def test_the_server_advertises_all_but_unselect(
    dovecot: DovecotServer, no_unselect: DovecotServer
) -> None:
    """The adapter sees no UNSELECT there, and every other extension it uses as on the
    session Dovecot (so only the deselection path differs)."""
    assert "UNSELECT" in advertised(dovecot)
    assert "UNSELECT" not in advertised(no_unselect)
    caps = {}
    for server in (dovecot, no_unselect):
        user = server.new_user("caps")
        with ImapSession.open(endpoint_of(server), Password(user.login, user.password)) as s:
            caps[server.name] = s.caps
    assert caps["coexist-test"].unselect and not caps["coexist-no-unselect"].unselect
    assert {**vars(caps["coexist-test"]), "unselect": False} == vars(caps["coexist-no-unselect"])


@pytest.mark.parametrize("folder", ["Sent", "INBOX"])
@pytest.mark.parametrize("advertise", [True, False], ids=["with UNSELECT", "without UNSELECT"])
def test_totals_after_a_select_count_what_other_connections_appended(
    with_unselect: DovecotServer, no_unselect: DovecotServer, folder: str, advertise: bool
) -> None:
    """A folder the store's connection has SELECTed (read-write, for PERMANENTFLAGS of a
    flagged copy) is counted as it is now, with a message another connection appended
    meanwhile, count and bytes: on a server with UNSELECT it is left by UNSELECT; on one
    without, by an EXAMINE of INBOX before its STATUS, and no UNSELECT is sent; INBOX itself
    by a failed EXAMINE (of a folder that does not exist), which leaves none selected."""
    server = with_unselect if advertise else no_unselect
    endpoint, user = endpoint_of(server), server.new_user("status")
    flagged = Payload(MIME, "", None, mime=message(1),
                      state=MessageState(flag={"flagStatus": "flagged"}))  # fmt: skip
    other = message(2)

    async def main() -> tuple[dict[str, int], Any]:
        creds = Password(user.login, user.password)
        with ImapSession.open(endpoint, creds) as session:
            async with ImapStore.open(ImapConnections(endpoint), creds) as store:
                made = await store.import_item(folder, flagged)  # SELECTs it (PERMANENTFLAGS)
                assert made.item_id is not None and made.lost is None
                session.append(folder, [NewMessage(other)])  # another connection
                return await store.totals(), await store.folder_totals()

    counts, sized = asyncio.run(main())
    assert counts[folder] == 2
    assert (sized[folder].count, sized[folder].size) == (2, len(message(1)) + len(other))

    # The store's connection that SELECTed the folder read-write, then STATUSed it.
    [sent] = [c for c in commands_of(server, user) if f"SELECT {folder}" in c]
    selected = sent.index(f"SELECT {folder}")
    statuses = [i for i, c in enumerate(sent) if counted(c, folder) and i > selected]
    assert statuses, sent  # totals, then folder_totals
    between = sent[selected + 1 : statuses[0]]
    if advertise:
        assert "UNSELECT" in between, sent
        return
    assert "UNSELECT" not in sent, sent
    if folder != "INBOX":
        # The fallback: EXAMINE INBOX after the SELECT, before the STATUS it clears the way for.
        assert "EXAMINE INBOX" in between, sent
        return
    # INBOX itself: left by a failed EXAMINE of a folder that does not exist, once; then
    # nothing is selected, and no STATUS of INBOX is sent with INBOX selected.
    failed = [c for c in sent if c.startswith("EXAMINE coexist-unselect-")]
    assert len(failed) == 1 and failed[0] in between, sent
    assert "EXAMINE INBOX" not in sent[selected:], sent


def test_the_listing_reads_every_count_in_one_command(with_unselect: DovecotServer) -> None:
    """With LIST-STATUS offered, a listing with counts sends one LIST-STATUS and no STATUS,
    after leaving the folder the connection had selected."""
    endpoint, user = endpoint_of(with_unselect), with_unselect.new_user("liststatus")
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        s.append("Sent", [NewMessage(message(1))])
        assert s.permanent_flags("Sent") is not None  # Sent selected
        assert {f.name: f.messages for f in s.list_folders()}["Sent"] == 1
    [sent] = commands_of(with_unselect, user)
    listing = sent[sent.index("SELECT Sent") + 1 :]
    assert listing == ["UNSELECT", "LIST-STATUS", "LOGOUT"], sent


class Delivering(ImapSession):
    """An adapter session after whose deselection another connection delivers a message
    (`deliver`): new mail landing between the fallback and the STATUS it clears the way
    for, which that STATUS must count."""

    deliver: Callable[[], None] | None = None

    def _unselect(self) -> None:
        super()._unselect()
        if self.deliver is not None:
            self.deliver()


def test_a_status_of_inbox_counts_mail_delivered_right_after_the_fallback(
    no_unselect: DovecotServer,
) -> None:
    """INBOX selected (read-write), then its STATUS on the server without UNSELECT: a message
    another connection appends right after the fallback left INBOX is counted. Re-EXAMINing
    INBOX would leave it selected, and Dovecot answers STATUS of the selected folder from
    the selection's view (it counted 1 of 2); a failed EXAMINE deselects (RFC 3501 6.3.1)."""
    endpoint, user = endpoint_of(no_unselect), no_unselect.new_user("race")
    creds = Password(user.login, user.password)
    with Delivering.open(endpoint, creds) as a, ImapSession.open(endpoint, creds) as b:
        assert isinstance(a, Delivering) and not a.caps.unselect
        a.append("INBOX", [NewMessage(message(1))])
        assert a.permanent_flags("INBOX") is not None  # a read-write SELECT of INBOX
        a.deliver = lambda: b.append("INBOX", [NewMessage(message(2))]) and None
        assert a.folder("INBOX").messages == 2
        a.deliver = None
        assert a.folder("INBOX").messages == 2  # nothing selected now: nothing to leave
    [sent] = [c for c in commands_of(no_unselect, user) if "SELECT INBOX" in c]
    assert "UNSELECT" not in sent and sent.count("STATUS INBOX") == 2, sent


def test_a_whole_imap_to_imap_project_runs_against_a_server_without_unselect(
    no_unselect: DovecotServer, tmp_path: Path
) -> None:
    """Prestage and cutover between two users of the server without UNSELECT: every source
    message once in its mapped target folder with flags and dates, re-runs copy nothing,
    and the reconciliation of each pass has no difference."""
    from tests.e2e.imap_scene import Scene, run, run_json
    from tests.e2e.test_imap_to_imap import older

    scene = Scene(no_unselect, tmp_path)
    p = str(scene.project)
    for u in scene.users:
        scene.seed(u)
    assert run("batch", "import", "--project", p, str(scene.csv()), "--json").exit_code == 0
    result = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not result["failed"] and not result["waiting"], result
    for u in scene.users:
        assert scene.fingerprints(u.target) == older(scene.fingerprints(u.source, mapped=True))
    first = scene.users[0]
    scene.add(first, "INBOX.Projects", 900)
    scene.reflag(first, "INBOX.L1.L2.L3.L4")
    cut = run_json("cutover", "--project", p, "--all")
    assert not cut["failed"] and not cut["waiting"], cut
    for u in scene.users:
        source = scene.fingerprints(u.source, mapped=True)
        assert scene.fingerprints(u.target) == source, u.address
        assert max(source.values()) == 1
    again = run_json("cutover", "--project", p, "--all")
    assert not again["failed"] and scene.copied_by_last("cutover") == 0
    # What the server read: no UNSELECT, and the fallback cleared the way for a STATUS.
    connections = [
        c for u in scene.users for x in (u.source, u.target) for c in commands_of(no_unselect, x)
    ]
    assert connections and not [c for c in connections if "UNSELECT" in c], connections
    assert sum(fallbacks(c) for c in connections) > 0, connections
    status = run_json("status", "--project", p)
    assert {(r["phase"], r["state"]) for r in status["users"]} == {("cutover", "ok")}, status
    unexplained = list(values_of(status, "unexplained"))
    assert len(unexplained) >= len(scene.users) and set(unexplained) == {0}, status


def fallbacks(sent: list[str]) -> int:
    """How often a connection left a selected folder F by the fallback (EXAMINE INBOX, or a
    failed EXAMINE when F is INBOX) right before a STATUS of F or a LIST-STATUS."""
    n, selected = 0, None
    for i, c in enumerate(sent):
        verb, _, box = c.partition(" ")
        if verb in ("SELECT", "EXAMINE"):
            left = (c == "EXAMINE INBOX" and selected not in (None, "INBOX")) or (
                box.startswith("coexist-unselect-") and selected == "INBOX"
            )
            following = sent[i + 1] if i + 1 < len(sent) else ""
            n += left and counted(following, selected)
            selected = None if box.startswith("coexist-unselect-") else box
    return n


def values_of(data: Any, key: str) -> Iterator[Any]:
    """Every value of `key` anywhere in a JSON document."""
    if isinstance(data, dict):
        for k, v in data.items():
            if k == key:
                yield v
            yield from values_of(v, key)
    elif isinstance(data, list):
        for v in data:
            yield from values_of(v, key)
