"""IMAP -> Microsoft 365 through the CLI: a real Dovecot source, the sandbox's target
tenant. `batch import` of a MigrationWiz CSV (passwords into the vault), `prestage
--older-than 90d`, `cutover`: every message once in its mapped folder, not a draft, with
INTERNALDATE as receivedDateTime and its flags; re-runs copy nothing; each pass says it
moved mail only. The acceptance scene of issue 11 (`imap_scene`: folder names with quotes,
a slash, non-ASCII characters and a five-deep tree, `^INBOX/->`) lands with the right
displayName paths, and a UIDVALIDITY change between the passes copies nothing twice."""

from __future__ import annotations

import csv
import datetime as dt
import json
from collections import Counter
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from coexist.cli import main
from coexist.journal import Journal
from coexist.migrate.imap_graph import MAIL_ONLY
from coexist.sandbox import Sandbox
from coexist.sandbox.mailstore import Item
from coexist.settings import load_project
from coexist.tenants.imap import ImapEndpoint, ImapSession, NewMessage, Password
from coexist.vault import ENV_KEY, new_key
from tests.dovecot import DovecotServer, ImapUser
from tests.e2e import imap_scene
from tests.e2e.imap_scene import FOLDERS, Fingerprint, Scene
from tests.e2e.test_imap_to_imap import older

KEY = new_key()
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
OLD = NOW - dt.timedelta(days=200)  # prestage --older-than 90d moves these
NEW = NOW - dt.timedelta(days=5)  # cutover moves these


def run(*args: str) -> Result:
    """The CLI in-process with the vault key set."""
    return CliRunner().invoke(main, list(args), env={ENV_KEY: KEY}, catch_exceptions=False)


def run_json(*args: str) -> dict[str, Any]:
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    out: dict[str, Any] = json.loads(r.output)
    return out


def message(subject: str) -> bytes:
    return (
        f"From: sender@example.org\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.org>\r\n"
        f"Date: Mon, 4 Mar 2019 05:06:07 +0000\r\n\r\nbody of {subject}\r\n"
    ).encode()


def seed_source(dovecot: DovecotServer, user: ImapUser) -> None:
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    seen, flagged = frozenset({"\\Seen"}), frozenset({"\\Flagged"})
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        s.create_folder(["INBOX", "Projects"], "/")
        s.append("INBOX", [NewMessage(message("old read"), seen, frozenset({"Work"}), OLD)])
        s.append("INBOX", [NewMessage(message("new flagged"), flagged, frozenset(), NEW)])
        s.append("INBOX/Projects", [NewMessage(message("old nested"), seen, frozenset(), OLD)])
        s.append("Sent", [NewMessage(message("new sent"), seen, frozenset(), NEW)])


def write_project(directory: Path, dovecot: DovecotServer, sandbox: Sandbox) -> Path:
    directory.mkdir(parents=True)
    conn = sandbox.state_dir / "connection.json"
    (directory / "project.toml").write_text(
        f'[source]\nkind = "imap"\n\n[source.imap]\nhost = "{dovecot.host}"\n'
        f'port = {dovecot.tls_port}\nca_file = "{dovecot.ca_file}"\n\n'
        f'[target]\nsandbox_connection = "{conn}"\n\n'
        '[domains]\ndestination_domain = "example.net"\n\n'
        '[migration]\nfolder_rules = ["^INBOX/->"]\n'
    )
    return directory


def write_csv(path: Path, user: ImapUser, address: str, destination: str) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Source Email", "Source Login Name", "Source Password", "Destination Email"])
        w.writerow([address, user.login, user.password, destination])
    return path


def target_user(sandbox: Sandbox) -> tuple[str, str]:
    """(id, userPrincipalName) of a target mailbox."""
    with sandbox.world.lock:
        user = sorted(
            (u for u in sandbox.world.target.users.values()
             if u.recipient_type_details == "UserMailbox"),
            key=lambda u: u.user_principal_name,
        )[0]  # fmt: skip
        return str(user.id), str(user.user_principal_name)


def landed(sandbox: Sandbox, mailbox: str) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for item in sandbox.mail.iter_messages("target", mailbox):
        out.setdefault(item.subject, []).append(item)
    return out


def last_pass(project: Path) -> dict[str, Any]:
    with Journal.open(load_project(project).journal_url) as j:
        user = j.items(kind="user")[0]
        return j.passes(str(user["key"]))[-1]


def test_imap_source_prestage_then_cutover_into_microsoft_365(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """batch import -> prestage --older-than 90d -> cutover: old mail first, the rest after,
    each message once in its mapped folder, not a draft, received at its INTERNALDATE,
    flags kept; a second cutover copies 0 and its pass says it moves mail only; no output
    holds the IMAP password."""
    sandbox.write_connection()
    source = dovecot.new_user("m365e2e")
    seed_source(dovecot, source)
    box, upn = target_user(sandbox)
    project = write_project(tmp_path / "project", dovecot, sandbox)
    p = str(project)
    assert load_project(project).migration.mover == "imap-graph"  # the kinds' default
    users = write_csv(tmp_path / "users.csv", source, "ann@example.org", upn)
    imported = run("batch", "import", "--project", p, str(users), "--name", "wave1", "--json")
    assert imported.exit_code == 0, imported.output

    first = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not first["failed"] and not first["waiting"], first
    assert sorted(landed(sandbox, box)) == ["old nested", "old read"]
    final = run_json("cutover", "--project", p, "--all")
    assert not final["failed"] and not final["waiting"], final
    again = run("cutover", "--project", p, "--all", "-v")
    assert again.exit_code == 0, again.output
    assert int(last_pass(project)["counts"].get("copied", 0)) == 0
    # The run says what it does not move (the pass detail, in the output for people).
    assert MAIL_ONLY in again.output, again.output
    status = run("status", "--project", p, "--json")
    assert '"last_kind": "cutover"' in status.output and '"unexplained": 0' in status.output
    outputs = [imported.output, json.dumps(first), json.dumps(final), again.output, status.output]
    assert not [o for o in outputs if source.password in o]  # the vault keeps it

    target = landed(sandbox, box)
    assert sorted(target) == ["new flagged", "new sent", "old nested", "old read"]
    assert all(len(copies) == 1 for copies in target.values()), target
    by = {s: t for s, [t] in target.items()}
    folders = {s: sandbox.mail.folder("target", box, t.folder_id) for s, t in by.items()}
    assert {s: f.display_name for s, f in folders.items() if f} == {
        "old read": "Inbox",
        "new flagged": "Inbox",
        "old nested": "Projects",  # ^INBOX/-> : INBOX's children at the top
        "new sent": "Sent Items",
    }
    for subject, t in by.items():
        assert not t.is_draft, subject
        expected = OLD if subject.startswith("old") else NEW
        assert dt.datetime.fromisoformat(t.received.replace("Z", "+00:00")) == expected
    assert (by["old read"].is_read, by["old read"].categories) == (True, ["Work"])
    assert by["new flagged"].flag["flagStatus"] == "flagged" and not by["new flagged"].is_read


def test_a_destination_the_target_tenant_lacks_fails_that_user_clearly(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A batch row whose destination address is no mailbox of the target tenant: that user's
    pass fails naming the user and the mailbox, nothing is written, the run goes on."""
    sandbox.write_connection()
    source = dovecot.new_user("m365bad")
    seed_source(dovecot, source)
    project = write_project(tmp_path / "project", dovecot, sandbox)
    p = str(project)
    users = write_csv(tmp_path / "users.csv", source, "bob@example.org", "nobody@contoso.example")
    assert run("batch", "import", "--project", p, str(users), "--name", "w").exit_code == 0
    result = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json")
    out = json.loads(result.output)
    [failed] = out["failed"]
    assert failed["user"] == "bob@example.org", out
    assert "the target tenant has no mailbox nobody@contoso.example" in failed["error"], out
    assert "Destination Email" in failed["next"], out
    assert out["writes"] == {"source": 0, "target": 0}, out


# What a message is in Microsoft 365, as far as the move must keep it: Message-ID, the
# displayName path of its folder, isRead, flagStatus, categories, receivedDateTime.
GraphPrint = tuple[str, tuple[str, ...], bool, str, tuple[str, ...], str]
# The well-known folders the source's names stand for (Dovecot's special-use \Sent,
# \Archive; INBOX), by the displayName the sandbox gives them (Graph's English names).
WELL_KNOWN = {"INBOX": "Inbox", "Sent": "Sent Items", "Archive": "Archive"}


def graph_print(source: Fingerprint) -> GraphPrint:
    """What a source message (its fingerprint, path as `^INBOX/->` maps it) should be in
    Microsoft 365: \\Seen -> isRead, \\Flagged -> flagged, user keywords (not the "$"
    ones, nor \\Answered) -> categories, INTERNALDATE -> receivedDateTime."""
    message_id, _, path, flags, internaldate = source
    top = WELL_KNOWN.get(path[0], path[0])
    categories = tuple(sorted(f for f in flags if not f.startswith(("\\", "$"))))
    flag = "flagged" if "\\Flagged" in flags else "notFlagged"
    return (message_id, (top, *path[1:]), "\\Seen" in flags, flag, categories, internaldate)


def expected(prints: Counter[Fingerprint]) -> Counter[GraphPrint]:
    return Counter({graph_print(k): n for k, n in prints.items()})


def path_of(sandbox: Sandbox, mailbox: str, folder_id: str) -> tuple[str, ...]:
    """The displayName path of a target folder, from the top of the mailbox."""
    out: list[str] = []
    f = sandbox.mail.folder("target", mailbox, folder_id)
    while f is not None and f.well_known != "msgfolderroot":
        out.insert(0, f.display_name)
        f = sandbox.mail.folder("target", mailbox, f.parent_id) if f.parent_id else None
    return tuple(out)


def graph_prints(sandbox: Sandbox, mailbox: str) -> Counter[GraphPrint]:
    """Every message of a target mailbox, read from the sandbox's store (no Graph call)."""
    out: Counter[GraphPrint] = Counter()
    for item in sandbox.mail.iter_messages("target", mailbox):
        assert not item.is_draft, item.subject
        received = dt.datetime.fromisoformat(item.received.replace("Z", "+00:00"))
        out[
            (
                str(item.internet_message_id),
                path_of(sandbox, mailbox, item.folder_id),
                item.is_read,
                str(item.flag.get("flagStatus")),
                tuple(sorted(item.categories)),
                received.astimezone(dt.UTC).isoformat(),
            )
        ] += 1
    return out


def target_mailboxes(sandbox: Sandbox, n: int) -> list[tuple[str, str]]:
    """(id, userPrincipalName) of `n` target mailboxes."""
    with sandbox.world.lock:
        users = sorted(
            (u for u in sandbox.world.target.users.values()
             if u.recipient_type_details == "UserMailbox"),
            key=lambda u: u.user_principal_name,
        )[:n]  # fmt: skip
        return [(str(u.id), str(u.user_principal_name)) for u in users]


def m365_scene(
    dovecot: DovecotServer, sandbox: Sandbox, root: Path, users: int, scale: int = 1
) -> tuple[Scene, dict[str, str]]:
    """The acceptance scene's users (seeded, `scale` times as many messages) moving into
    sandbox mailboxes; the batch imported. Returns the scene and each user's target id."""
    sandbox.write_connection()
    scene = Scene(dovecot, root, users=users)
    scene.write_m365_project(sandbox.state_dir / "connection.json")
    boxes = target_mailboxes(sandbox, users)
    for u in scene.users:
        scene.seed(u, scale=scale)
    csv_path = scene.m365_csv(
        {u.address: upn for u, (_, upn) in zip(scene.users, boxes, strict=True)}
    )
    imap_scene.run_json(
        "batch", "import", "--project", str(scene.project), str(csv_path), "--name", "wave1"
    )
    return scene, {u.address: box for u, (box, _) in zip(scene.users, boxes, strict=True)}


def test_odd_folder_names_and_a_uidvalidity_change_into_microsoft_365(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """prestage --older-than 90d, then (a new UIDVALIDITY on the source's INBOX and on a
    five-deep folder, new mail, flag changes) cutover: every message exactly once under the
    displayName path `^INBOX/->` maps its folder to (quotes, a slash, non-ASCII, five deep),
    flags and receivedDateTime kept; cutover copies only what prestage had not; a further
    cutover copies 0."""
    scene, boxes = m365_scene(dovecot, sandbox, tmp_path, users=1)
    [user] = scene.users
    box = boxes[user.address]
    p = str(scene.project)
    assert load_project(scene.project).migration.mover == "imap-graph"

    first = imap_scene.run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not first["failed"] and not first["waiting"], first
    source = scene.fingerprints(user.source, mapped=True)
    assert graph_prints(sandbox, box) == expected(older(source))
    assert imap_scene.run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert scene.copied_by_last("prestage") == 0

    # Between the passes: a restored source server (new UIDVALIDITY of INBOX and of a
    # deep folder), new mail, flags changed at the source.
    deep = "INBOX.L1.L2.L3.L4"
    dovecot.set_uidvalidity(user.source, "INBOX", 4242)
    dovecot.set_uidvalidity(user.source, deep, 4343)
    scene.add(user, "INBOX.Projects", 900)
    scene.reflag(user, deep)

    final = imap_scene.run_json("cutover", "--project", p, "--all")
    assert not final["failed"] and not final["waiting"], final
    source = scene.fingerprints(user.source, mapped=True)
    got = graph_prints(sandbox, box)
    assert got == expected(source), {
        "missing": list((expected(source) - got).elements())[:5],
        "extra": list((got - expected(source)).elements())[:5],
    }
    assert max(got.values()) == 1
    paths = {k[1] for k in got}
    assert {('Say "hi"',), ("a/b",), ("Ünïcødé 日本",), ("L1", "L2", "L3", "L4")} <= paths
    prestaged = sum(old for old, _ in FOLDERS.values())
    assert scene.copied_by_last("cutover") == source.total() - prestaged

    imap_scene.run_json("cutover", "--project", p, "--all")
    assert scene.copied_by_last("cutover") == 0
    assert graph_prints(sandbox, box) == got


def test_a_message_without_message_id_is_copied_once_across_a_uidvalidity_change(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A message with no Message-ID header (RFC 5322 makes it optional) is known by its
    INTERNALDATE and size: after its folder gets a new UIDVALIDITY, cutover pairs it with
    its copy instead of copying it a second time."""
    sandbox.write_connection()
    scene = Scene(dovecot, tmp_path, users=1)
    scene.write_m365_project(sandbox.state_dir / "connection.json")
    [(box, upn)] = target_mailboxes(sandbox, 1)
    [user] = scene.users
    raw = (
        b"From: a@example.org\r\nTo: b@example.org\r\nSubject: no id\r\n"
        b"Date: Mon, 4 Mar 2019 05:06:07 +0000\r\n\r\nno Message-ID here\r\n"
    )
    with scene.imap(user.source) as s:
        s.append("INBOX", [NewMessage(raw, frozenset({"\\Seen"}), frozenset(), OLD)])
        s.append("INBOX", [NewMessage(message("with id"), frozenset(), frozenset(), OLD)])
    p = str(scene.project)
    csv_path = scene.m365_csv({user.address: upn})
    imap_scene.run_json("batch", "import", "--project", p, str(csv_path), "--name", "w")
    imap_scene.run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    dovecot.set_uidvalidity(user.source, "INBOX", 4242)

    final = imap_scene.run_json("cutover", "--project", p, "--all")
    assert not final["failed"] and not final["waiting"], final
    assert scene.copied_by_last("cutover") == 0
    target = landed(sandbox, box)
    assert sorted(target) == ["no id", "with id"] and len(target["no id"]) == 1, target
    [copy] = target["no id"]
    assert copy.is_read and dt.datetime.fromisoformat(copy.received.replace("Z", "+00:00")) == OLD
