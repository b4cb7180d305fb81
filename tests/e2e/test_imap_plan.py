"""Plan mode of IMAP passes through the CLI, against a real Dovecot (and the sandbox tenant):
`prestage --plan` and `cutover --plan` open both stores, run the real sync with the target's
writes captured, and say per user which folders would be made and how many messages (and
bytes) would be copied from each folder, updated, moved or deleted. The target is left as it
was, the journal without an item map row, a cursor or a pass; the real pass then copies
exactly what the plan said, every message once. No password in any plan output."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC
from pathlib import Path
from typing import Any

from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.dovecot import DovecotServer, ImapUser
from tests.e2e.imap_scene import NEW, OLD, MailUser, Scene, run, run_json
from tests.e2e.test_imap_to_imap import assert_no_password

CUT = (OLD + (NEW - OLD) / 2).isoformat()  # prestage --older-than 90d: INTERNALDATE before


def target_state(scene: Scene, user: ImapUser) -> tuple[Any, ...]:
    """Everything of a target mailbox a write would change: its folders with their
    UIDVALIDITY, last UID and HIGHESTMODSEQ (a flag change raises it), its messages
    (content, folder, flags, date), its files."""
    with scene.imap(user) as s:
        folders = sorted(
            (f.name, s.changes(f.name, None).next) for f in s.list_folders() if f.selectable
        )
    return folders, scene.fingerprints(user), scene.stored(user)


def sizes(scene: Scene, user: MailUser, *, before: str | None = None) -> dict[str, list[int]]:
    """Source folder -> the RFC 822 sizes of its messages (received before `before`)."""
    out: dict[str, list[int]] = {}
    with scene.imap(user.source) as s:
        for f in s.list_folders():
            if not f.selectable:
                continue
            refs = s.changes(f.name, None).new
            for m in s.fetch(f.name, refs):
                if before is None or m.internaldate.astimezone(UTC).isoformat() < before:
                    out.setdefault(f.name, []).append(len(m.raw))
    return out


def journal_state(project: Path) -> dict[str, Any]:
    """The journal's state tables and logs (passes, runs), less clocks and ids."""
    with Journal.open(load_project(project).journal_url) as j:
        return j.snapshot(include_logs=True)


def said(plan: dict[str, Any], user: str, action: str) -> list[dict[str, Any]]:
    """The plan's summary lines of one kind for one user."""
    return [
        w["params"]
        for w in plan["writes"]
        if w["system"] == "mail" and w["params"]["user"] == user and w["params"]["action"] == action
    ]


def copies(plan: dict[str, Any], user: str) -> dict[str, tuple[int, int]]:
    """Source folder -> (messages, bytes) the plan would copy for a user."""
    return {c["source_folder"]: (c["messages"], c["bytes"]) for c in said(plan, user, "copy")}


def test_imap_plan_says_what_the_pass_does_and_writes_nothing(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """prestage --plan: per user the folders it would make and the old messages per folder
    with their bytes, the target untouched (folders, UIDs, messages, files) and the journal
    unchanged (no item map row, cursor or pass); the real prestage then copies exactly that.
    After new mail and flag changes, cutover --plan says the copies and flag updates left,
    again writing nothing, and the real cutover copies them: every message once."""
    scene = Scene(dovecot, tmp_path)
    p = str(scene.project)
    for u in scene.users:
        scene.seed(u)
    outputs = [run("batch", "import", "--project", p, str(scene.csv()), "--json").output]
    targets = {u.address: target_state(scene, u.target) for u in scene.users}
    journal = journal_state(scene.project)

    args = ("prestage", "--project", p, "--all", "--older-than", "90d")
    plan = run_json(*args, "--plan")
    outputs += [json.dumps(plan), run(*args, "--plan", "-v").output]
    assert plan["plan"] and not plan["failed"] and not plan["waiting"], plan
    assert plan["would_change"] == len(scene.users), plan
    assert {u.address: target_state(scene, u.target) for u in scene.users} == targets
    assert journal_state(scene.project) == journal  # not a row: no item map, cursor, pass
    human = " ".join(outputs[-1].split())  # as said, less the terminal's wrapping
    for u in scene.users:
        old = {f: (len(s), sum(s)) for f, s in sizes(scene, u, before=CUT).items()}
        assert copies(plan, u.address) == old, plan["writes"]
        assert {c["folder"] for c in said(plan, u.address, "create folder")} >= {"Archive"}
        assert not said(plan, u.address, "update") and not said(plan, u.address, "delete")
        n, size = old["INBOX"]
        assert f"{u.address}: copy {n} messages ({size} bytes) from INBOX to INBOX" in human
        assert f"{u.address}: copy 1 message (" in human

    # A trial plan: the last [trial] days (10) of each folder, nothing written either.
    trial = run_json("prestage", "--project", p, "--all", "--trial", "--plan")
    outputs.append(json.dumps(trial))
    assert {u.address: target_state(scene, u.target) for u in scene.users} == targets
    assert journal_state(scene.project) == journal
    for u in scene.users:
        recent = {
            f: (len(s) - len(o), sum(s) - sum(o))
            for f, s in sizes(scene, u).items()
            for o in [sizes(scene, u, before=CUT).get(f, [])]
            if len(s) > len(o)
        }
        assert copies(trial, u.address) == recent, trial["writes"]

    real = run_json(*args)
    outputs.append(json.dumps(real))
    assert not real["failed"] and not real["waiting"], real
    for u in scene.users:
        with scene.imap(u.target) as s:
            made = {f.name for f in s.list_folders()} - {f[0] for f in targets[u.address][0]}
        assert made == {c["folder"] for c in said(plan, u.address, "create folder")}
    planned = sum(n for u in scene.users for n, _ in copies(plan, u.address).values())
    assert scene.copied_by_last("prestage") == planned
    planned_bytes = sum(b for u in scene.users for _, b in copies(plan, u.address).values())
    assert sum(int(x["counts"]["bytes"]) for x in scene.passes()) == planned_bytes

    # New mail, and flags changed on a copied message and an uncopied one.
    first = scene.users[0]
    scene.add(first, "INBOX.Projects", 900)
    scene.reflag(first, "INBOX.L1.L2.L3.L4")
    targets = {u.address: target_state(scene, u.target) for u in scene.users}
    journal = journal_state(scene.project)
    cut = run_json("cutover", "--project", p, "--all", "--plan")
    outputs.append(json.dumps(cut))
    assert not cut["failed"] and not cut["waiting"], cut
    assert {u.address: target_state(scene, u.target) for u in scene.users} == targets
    assert journal_state(scene.project) == journal
    left = {u.address: sizes(scene, u) for u in scene.users}
    for u in scene.users:
        new = {
            f: (len(s) - len(o), sum(s) - sum(o))
            for f, s in left[u.address].items()
            for o in [sizes(scene, u, before=CUT).get(f, [])]
            if len(s) > len(o)
        }
        assert copies(cut, u.address) == new, cut["writes"]
        assert not said(cut, u.address, "create folder")
    [update] = said(cut, first.address, "update")
    assert update["messages"] == 1  # the copied message of INBOX.L1.L2.L3.L4 reflagged
    assert not said(cut, scene.users[1].address, "update")

    final = run_json("cutover", "--project", p, "--all")
    outputs.append(json.dumps(final))
    assert not final["failed"] and not final["waiting"], final
    expected = sum(n for u in scene.users for n, _ in copies(cut, u.address).values())
    assert scene.copied_by_last("cutover") == expected
    for u in scene.users:
        source = scene.fingerprints(u.source, mapped=True)
        assert scene.fingerprints(u.target) == source and max(source.values()) == 1
    again = run_json("cutover", "--project", p, "--all", "--plan")
    assert again["would_change"] == 0 and not again["writes"], again
    assert_no_password(scene, outputs)


def test_imap_to_m365_plan_leaves_the_tenant_as_it_was(
    dovecot: DovecotServer, sandbox: Sandbox, tmp_path: Path
) -> None:
    """imap -> m365: prestage --plan reads the IMAP source and the target mailbox through
    Graph, says the folders it would make and the messages per folder with their bytes, and
    sends no Graph write: the mailbox's folders and messages are as they were, the journal
    has no item map row; the real prestage copies the planned messages, once."""
    sandbox.write_connection()
    scene = Scene(dovecot, tmp_path, users=1)
    [user] = scene.users
    scene.write_m365_project(sandbox.state_dir / "connection.json")
    scene.seed(user)
    with sandbox.world.lock:
        mailbox = sorted(
            (u for u in sandbox.world.target.users.values()
             if u.recipient_type_details == "UserMailbox"),
            key=lambda u: u.user_principal_name,
        )[0]  # fmt: skip
    box, upn = str(mailbox.id), str(mailbox.user_principal_name)
    p = str(scene.project)
    csv = scene.m365_csv({user.address: upn})
    imported = run("batch", "import", "--project", p, str(csv), "--name", "wave1", "--json")
    assert imported.exit_code == 0, imported.output

    def tenant() -> tuple[Any, ...]:
        folders: list[tuple[str, int, int]] = []
        stack = [("", None)]
        while stack:
            prefix, parent = stack.pop()
            for f in sandbox.mail.child_folders("target", box, parent):
                folders.append((prefix + f.display_name, f.total, f.size))
                stack.append((prefix + f.display_name + "/", f.id))
        messages = Counter(m.subject for m in sandbox.mail.iter_messages("target", box))
        return sorted(folders), messages

    before, journal = tenant(), journal_state(scene.project)
    args = ("prestage", "--project", p, "--all", "--older-than", "90d")
    plan = run_json(*args, "--plan")
    assert not plan["failed"] and not plan["waiting"], plan
    assert tenant() == before and journal_state(scene.project) == journal
    assert all(w["system"] == "mail" for w in plan["writes"]), plan["writes"]  # no bodies
    old = {f: (len(s), sum(s)) for f, s in sizes(scene, user, before=CUT).items()}
    assert copies(plan, user.address) == old, plan["writes"]
    made = {c["folder"] for c in said(plan, user.address, "create folder")}
    assert "Projects" in made and "INBOX" not in made, made
    assert not said(plan, user.address, "update") and not said(plan, user.address, "other")

    real = run_json(*args)
    assert not real["failed"] and not real["waiting"], real
    assert scene.copied_by_last("prestage") == sum(n for n, _ in old.values())
    landed = Counter(m.subject for m in sandbox.mail.iter_messages("target", box))
    assert sum(landed.values()) - sum(before[1].values()) == sum(n for n, _ in old.values())
    assert_no_password(scene, [json.dumps(plan), json.dumps(real)])
