"""Users and credentials: `coexist batch import` of user files, `coexist credentials`.

A user file (`coexist.batches.read_user_file`: a plain batch CSV, CodeTwo's user CSV or
MigrationWiz's Bulk Add CSV) gives each row's batch name to the journal, as batch import
always did, and its passwords to the credential vault (`coexist.vault`), nowhere else. A row
of a file with a password column whose password is empty, for a user the vault has no
password for, leaves that user `waiting` for credentials (status says which and the command
that gives them) until `coexist credentials set` or a later import brings one; a user that
has started moving (past `discovered`) is not put back to waiting. `credentials purge` ends
a project's credentials: `--all` deletes the vault file (no key needed), `--users` removes
those users' entries. An IMAP side with `[S.imap] master_user` takes that user's password
once (`credentials set --master --side S`, the vault entry `vault.MASTER_ENTRY`); its users
then need no password of their own on that side, and `purge --master` removes it.

Every result here is safe to print or write as `--json`: logins and times, never a password.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coexist import batches
from coexist.batches import UserFile, UserRow
from coexist.engine.context import KIND_CAPABILITIES
from coexist.engine.runner import set_item
from coexist.errors import InputError
from coexist.journal import Journal, claims
from coexist.model import Phase
from coexist.runtime import open_journal, project_dir
from coexist.settings import Project, load_project
from coexist.tenants.oauth import CLIENT_CREDENTIALS, GRANTS, M365_IMAP_SCOPE, OAuthApp
from coexist.vault import (
    LINK_KEY_ENTRY,
    MASTER_ENTRY,
    OAUTH_APP_ENTRY,
    SIDES,
    WORKMAIL_ENTRY,
    Credential,
    Entries,
    Vault,
)

# What a user waiting for credentials waits for (status shows it); the prefix finds them.
WAITING_FOR = "credentials"
# ... and a user whose end user was mailed a link for them (`coexist.credlink`): status
# reads "waiting | end user: ... link sent ...". Both are waits for credentials.
WAITING_FOR_END_USER = "end user"
CREDENTIAL_WAITS = (WAITING_FOR, WAITING_FOR_END_USER)


def users_come_from_file(project: Project) -> bool:
    """Whether the project's source has no directory, so its user file is the list of users
    (DESIGN.md "Endpoint kinds": an `imap` source). A Microsoft 365 source's users come from
    `coexist discover` — unless the target has no directory either (Microsoft 365 -> WorkMail
    or Exchange), where discover cannot run and the file lists the users too."""
    return any(
        "directory" not in KIND_CAPABILITIES.get(side.kind, frozenset())
        for side in (project.source, project.target)
    )


# -- batch import ---------------------------------------------------------------------------
def import_batch(
    project: Project,
    journal: Journal,
    file: Path,
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Record batch names (and, for a source without a directory, the users) from a user
    file; passwords go to the vault. Everything is checked before the first write."""
    user_file = batches.read_user_file(file)
    rows = user_file.rows
    items = _rows_to_items(project, journal, user_file)
    missing_name = [str(r.line) for r in rows if not (r.batch or name)]
    if missing_name:
        raise InputError(
            f"{file}: rows {', '.join(missing_name[:10])} have no batch name",
            next_step="add a Batch column, or pass --name",
        )
    _refuse_held(journal, user_file, items, name)
    given = {
        (str(item["key"]), side): Credential(login, password)
        for row, item in zip(rows, items, strict=True)
        for side, (login, password) in row.credentials().items()
    }
    vault = _vault_for(project, bool(given), bool(user_file.password_sides), env)
    held = vault.read() if vault is not None else {}
    stored = vault.put(given) if vault is not None and given else []
    assigned: Counter[str] = Counter()
    waiting: list[dict[str, str]] = []
    for row, item in zip(rows, items, strict=True):
        key = str(item["key"])
        if item.get("new"):
            journal.upsert_item("user", key, **_new_user(row, file))
        batch_name = row.batch or str(name)
        journal.update_item("user", key, batch=batch_name)
        assigned[batch_name] += 1
        lacking = [
            side
            for side in user_file.password_sides
            if (key, side) not in given
            and side not in held.get(key, {})
            and side not in master_sides(project, held)
        ]
        address = str(item.get("source_address") or row.source)
        if lacking:
            waiting += [{"user": address, "side": side} for side in lacking]
        _set_waiting(journal, project, key, address, lacking)
    if stored:
        journal.event(
            None,
            "info",
            f"batch import {file.name}: credentials stored in the vault for "
            f"{len({u for u, _ in stored})} user(s)",
            data={"users": sorted({u for u, _ in stored}), "file": str(file)},
        )
    return {
        "assigned": dict(assigned),
        "shape": user_file.shape,
        "added": sum(1 for i in items if i.get("new")),
        "credentials_stored": len(stored),
        "credentials_unchanged": len(given) - len(stored),
        "waiting_for_credentials": waiting,
    }


def _refuse_held(
    journal: Journal, user_file: UserFile, items: list[dict[str, Any]], name: str | None
) -> None:
    """`Busy` before anything is written when the file would change a batch a playbook run
    holds: move a user into it or out of it, or (a file with password columns) set the
    credentials of one of its users, which the run's steps read. The whole file is refused,
    not just those rows: an import half done would leave the operator's CSV and the journal
    disagreeing, and the rows left out would be easy to forget. Checked, then written: a run
    that starts in between is not refused (it reads its batch's users at each step)."""
    held = claims.runbooks_holding(journal.engine)
    if not held:
        return
    concerned: list[dict[str, str]] = []
    for row, item in zip(user_file.rows, items, strict=True):
        old, new = str(item.get("batch") or ""), row.batch or str(name)
        who = str(item.get("source_address") or row.source)
        if old != new and old in held:
            concerned.append({"user": who, "batch": old, "change": f"out of {old} (to {new})"})
        if old != new and new in held:
            concerned.append({"user": who, "batch": new, "change": f"into {new}"})
        if old == new and new in held and user_file.password_sides:
            concerned.append({"user": who, "batch": new, "change": f"credentials in {new}"})
    if not concerned:
        return
    shown = ", ".join(f"{c['user']} {c['change']}" for c in concerned[:5])
    more = f" and {len(concerned) - 5} more" if len(concerned) > 5 else ""
    raise claims.runbook_refusal(
        {c["batch"]: held[c["batch"]] for c in concerned},
        f"that {user_file.path.name} changes ({shown}{more})",
        first=(
            f"nothing of {user_file.path.name} was imported (no row); import it again once "
            "the runbook has ended, or now without the rows of those users"
        ),
        users=concerned,
        file=str(user_file.path),
    )


def _rows_to_items(project: Project, journal: Journal, user_file: UserFile) -> list[dict[str, Any]]:
    """The journal user of each row. Unknown users are an error when the source has a
    directory (discover finds users); a source without one takes them from the file (marked
    `new`: recorded when the import writes)."""
    items = journal.items(kind="user")
    names = [r.source for r in user_file.rows]
    if not users_come_from_file(project):
        return batches.select(items, names, what=str(user_file.path))
    index = batches.index_users(items)
    seen: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for row in user_file.rows:
        key = row.source.strip().lower()
        if key in seen:
            raise InputError(
                f"{user_file.path}: user(s) listed twice: {row.source} (lines {seen[key]} "
                f"and {row.line})",
                next_step="remove the duplicate rows",
                duplicate=[row.source],
            )
        seen[key] = row.line
        out.append(index.get(key) or {"key": key, "source_address": row.source, "new": True})
    return out


def _new_user(row: UserRow, file: Path) -> dict[str, Any]:
    """The journal record of a user a user file brings (a source without a directory)."""
    return {
        "name": row.display_name or row.source,
        "source_address": row.source,
        "target_address": row.target or None,
        "phase": Phase.DISCOVERED.value,
        "state": "ok",
        "detail": {
            "source": {
                "login": row.login or row.source,
                "display_name": row.display_name,
                "first_name": row.first_name or None,
                "last_name": row.last_name or None,
            },
            # The target's IMAP login, where the file names one (MigrationWiz's Destination
            # Login Name): a master user opens that mailbox without a password of its own.
            "target": {"login": row.target_login or None},
            "from_file": file.name,
            "in_scope": True,
        },
    }


def _vault_for(
    project: Project, gives: bool, asks: bool, env: Mapping[str, str] | None
) -> Vault | None:
    """The vault, its key resolved, when the file gives passwords (`gives`) or has a password
    column (`asks`) and a vault exists to ask whether it holds them; else None (no key is
    needed to import a file without passwords)."""
    if gives or (asks and Vault(project.directory, None).exists()):
        return Vault.open(project.directory, env=env)
    return None


def _set_waiting(
    journal: Journal, project: Project, key: str, address: str, lacking: list[str]
) -> None:
    """Put a user that has not started moving to `waiting` for the credentials it lacks, or
    take one that waited for credentials back to `ok` when it has them now."""
    item = journal.get_item("user", key) or {}
    detail = item.get("detail") or {}
    was_waiting = item.get("state") == "waiting" and str(
        detail.get("waiting_for") or ""
    ).startswith(CREDENTIAL_WAITS)
    if lacking and item.get("phase") in (None, Phase.DISCOVERED.value):
        if item.get("state") in (None, "ok") or was_waiting:
            sides = " and ".join(lacking)
            set_item(
                journal,
                "user",
                key,
                state="waiting",
                waiting_for=f"{WAITING_FOR}: no {sides} password (coexist credentials set "
                f"--project {project.directory} --user {address})",
            )
    elif was_waiting and not lacking:
        set_item(journal, "user", key, state="ok", waiting_for=None)


# -- coexist credentials set / list / purge -------------------------------------------------
def credentials_set(
    directory: Path | None,
    user: str,
    password: str,
    *,
    side: str = "source",
    login: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Store one user's password (and login) for one side; a user waiting only for it is
    waiting no more."""
    if side not in SIDES:
        raise InputError(
            f"--side {side!r} is not one of: {', '.join(SIDES)}", next_step="--side source"
        )
    if not user.strip():
        raise InputError("--user is blank", next_step="--user alice@example.com")
    if not password.strip():
        raise InputError(
            "the password is empty", next_step="give the password at the prompt or on stdin"
        )
    if login is not None and not login.strip():
        raise InputError("--login is blank", next_step="leave out --login to use the address")
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        item = batches.select(journal.items(kind="user"), [user], what="credentials set")[0]
        address = str(item.get("source_address") or user)
        default_login = (item.get("detail") or {}).get("source", {}).get("login") or address
        key = str(item["key"])
        vault = Vault.open(project.directory, env=env)
        chosen = side
        cred = Credential((login or default_login).strip(), password)
        changed = vault.put({(key, chosen): cred})
        entries = vault.read()
        have = set(entries.get(key, {})) | master_sides(project, entries)
        lacking = [s for s in _waiting_sides(item) if s not in have]
        _set_waiting(journal, project, key, address, lacking)
        if changed:
            journal.event(
                None, "info", f"credentials set: {chosen} password of {address}", item_key=key
            )
        return {"user": address, "side": chosen, "login": cred.login, "changed": bool(changed)}
    finally:
        journal.close()


def master_sides(project: Project, entries: Entries) -> set[str]:
    """The sides whose users sign in through a master user: `[S.imap] master_user` is set
    and the vault holds its password (so no user waits for a password of that side); or
    through the side's OAuth client with its own tokens (`auth = "xoauth2"`, grant
    client_credentials: Microsoft 365's app access to every mailbox)."""
    held = entries.get(MASTER_ENTRY, {})
    apps = entries.get(OAUTH_APP_ENTRY, {})
    return {s for s in SIDES if _master_user(project, s) and s in held} | {
        s for s in SIDES if s in apps and _app_grant(apps[s]) == CLIENT_CREDENTIALS
    }


def _app_grant(entry: Credential) -> str | None:
    try:
        return OAuthApp.from_vault(entry.login, entry.password).grant
    except (ValueError, KeyError):
        return None


def _master_user(project: Project, side: str) -> str | None:
    """The side's `[S.imap] master_user`, where the side is an IMAP server that has one; an
    EWS side's admin (`[S.ews] admin`), whose password the same vault entry holds."""
    settings = project.source if side == "source" else project.target
    if settings.kind in ("exchange", "workmail"):
        return settings.ews.admin
    return settings.imap.master_user if settings.kind == "imap" else None


def credentials_set_master(
    directory: Path | None,
    password: str,
    *,
    side: str = "source",
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Store an IMAP side's master user password (`credentials set --master`): the vault
    entry MASTER_ENTRY that the side's opener and verify-credentials read; users waiting
    for a password of that side only are waiting no more."""
    if side not in SIDES:
        raise InputError(
            f"--side {side!r} is not one of: {', '.join(SIDES)}", next_step="--side source"
        )
    if not password.strip():
        raise InputError(
            "the password is empty", next_step="give the password at the prompt or on stdin"
        )
    project = load_project(project_dir(directory))
    master = _master_user(project, side)
    if master is None:
        raise InputError(
            f"the {side} has no master user ([{side}.imap] master_user in {project.file}): "
            "its password would never be used",
            key=f"{side}.imap.master_user",
            next_step=f'set master_user = "NAME" in [{side}.imap] of {project.file} (an IMAP '
            f"{side}), then run this command again; or give each user's password with "
            f"coexist credentials set --user U --side {side}",
        )
    journal = open_journal(project)
    try:
        vault = Vault.open(project.directory, env=env)
        changed = vault.put({(MASTER_ENTRY, side): Credential(master, password)})
        released = _release_waiting(journal, project, vault.read())
        if changed:
            journal.event(None, "info", f"credentials set: {side} master user {master}")
        return {
            "master": True,
            "side": side,
            "login": master,
            "changed": bool(changed),
            "no_longer_waiting": released,
        }
    finally:
        journal.close()


def credentials_set_workmail_key(
    directory: Path | None,
    secret: str,
    *,
    side: str = "target",
    key_id: str,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Store a WorkMail side's AWS access key (`credentials set --aws-key ID`): the vault
    entry WORKMAIL_ENTRY (login: the key id, secret: the secret access key) that the side's
    WorkMail admin API client reads before AWS_SECRET_ACCESS_KEY."""
    if side not in SIDES:
        raise InputError(
            f"--side {side!r} is not one of: {', '.join(SIDES)}", next_step="--side target"
        )
    if not secret.strip() or not key_id.strip():
        raise InputError(
            "the access key id or its secret is empty",
            next_step=f"coexist credentials set --aws-key AKIA... --side {side}",
        )
    project = load_project(project_dir(directory))
    settings = project.tenant(side)
    if settings.kind != "workmail":
        raise InputError(
            f"the {side} is of kind {settings.kind!r}, not workmail: an AWS key would never "
            "be used",
            next_step=f'set kind = "workmail" and [{side}.workmail] organization_id first',
        )
    journal = open_journal(project)
    try:
        vault = Vault.open(project.directory, env=env)
        changed = vault.put({(WORKMAIL_ENTRY, side): Credential(key_id.strip(), secret)})
        if changed:
            journal.event(None, "info", f"credentials set: {side} AWS access key {key_id}")
        return {"side": side, "login": key_id.strip(), "changed": bool(changed)}
    finally:
        journal.close()


def credentials_set_oauth_app(
    directory: Path | None,
    client_secret: str,
    *,
    side: str = "source",
    client_id: str,
    token_url: str,
    grant: str = CLIENT_CREDENTIALS,
    scope: str | None = None,
    ca_file: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Store an xoauth2 side's OAuth client (`credentials set --oauth-app`): the vault entry
    OAUTH_APP_ENTRY, from which the side opener obtains and refreshes access tokens
    (`tenants.oauth`). client_credentials (Microsoft 365) needs nothing per user, so users
    waiting for a password of that side only are waiting no more; refresh_token (Google)
    takes each user's refresh token as its password (`credentials set --user`, batch
    import). The scope of client_credentials defaults to Microsoft 365 IMAP's."""
    if side not in SIDES:
        raise InputError(
            f"--side {side!r} is not one of: {', '.join(SIDES)}", next_step="--side source"
        )
    if grant not in GRANTS:
        raise InputError(
            f"--grant {grant!r} is not one of: {', '.join(GRANTS)}",
            next_step=f"--grant {CLIENT_CREDENTIALS}  (Microsoft 365) or --grant refresh_token "
            "(Google)",
        )
    if not client_secret.strip():
        raise InputError(
            "the client secret is empty", next_step="give it at the prompt or on stdin"
        )
    if not client_id.strip() or not token_url.startswith("https://"):
        raise InputError(
            "--client-id and an https:// --token-url are needed",
            next_step="e.g. --token-url https://login.microsoftonline.com/TENANT/oauth2/v2.0/"
            "token (Microsoft 365) or https://oauth2.googleapis.com/token (Google)",
        )
    project = load_project(project_dir(directory))
    settings = project.source if side == "source" else project.target
    if settings.kind != "imap" or settings.imap.auth != "xoauth2":
        raise InputError(
            f'the {side} does not sign in with OAuth ([{side}.imap] auth = "xoauth2" in '
            f"{project.file}): its OAuth client would never be used",
            key=f"{side}.imap.auth",
            next_step=f'set auth = "xoauth2" in [{side}.imap] of {project.file}, then run '
            "this command again",
        )
    if grant == CLIENT_CREDENTIALS and not scope:
        scope = M365_IMAP_SCOPE
    app = OAuthApp(token_url, client_id.strip(), client_secret, grant, scope, ca_file)
    journal = open_journal(project)
    try:
        vault = Vault.open(project.directory, env=env)
        changed = vault.put({(OAUTH_APP_ENTRY, side): Credential(app.client_id, app.secret())})
        released = _release_waiting(journal, project, vault.read())
        if changed:
            journal.event(None, "info", f"credentials set: {side} OAuth client {app.client_id}")
        return {
            "oauth_app": True,
            "side": side,
            "client_id": app.client_id,
            "grant": grant,
            "token_url": token_url,
            "changed": bool(changed),
            "no_longer_waiting": released,
        }
    finally:
        journal.close()


def _release_waiting(journal: Journal, project: Project, entries: Entries) -> list[str]:
    """Users waiting for credentials that the vault now covers (their own or a master
    user's) go back to `ok`; returns their addresses."""
    released = []
    for item in journal.items(kind="user"):
        sides = _waiting_sides(item)
        if not sides:
            continue
        key = str(item["key"])
        have = set(entries.get(key, {})) | master_sides(project, entries)
        lacking = [s for s in sides if s not in have]
        if not lacking:
            address = str(item.get("source_address") or key)
            _set_waiting(journal, project, key, address, lacking)
            released.append(address)
    return released


def _waiting_sides(item: Mapping[str, Any]) -> list[str]:
    """The sides a user waiting for credentials waits for (from its waiting text)."""
    detail = item.get("detail") or {}
    text = str(detail.get("waiting_for") or "")
    if item.get("state") != "waiting" or not text.startswith(CREDENTIAL_WAITS):
        return []
    head = text.split("(", 1)[0]
    return [s for s in SIDES if s in head]


def credentials_list(
    directory: Path | None, *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Which users have which credentials (login, when set), and who waits for some."""
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        items = {str(i["key"]): i for i in journal.items(kind="user")}
        vault = Vault(project.directory, None)
        holdings = Vault.open(project.directory, env=env).holdings() if vault.exists() else {}
        masters = holdings.pop(MASTER_ENTRY, {})
        holdings.pop(LINK_KEY_ENTRY, None)  # the links' key, no user's
        apps = holdings.pop(OAUTH_APP_ENTRY, {})
        rows = []
        for key, sides in sorted(holdings.items(), key=lambda kv: _address(items, kv[0])):
            rows.append(
                {
                    "user": _address(items, key),
                    "name": (items.get(key) or {}).get("name"),
                    **{side: sides.get(side) for side in SIDES},
                    "in_journal": key in items,
                }
            )
        waiting = [
            {
                "user": _address(items, key),
                "waiting_for": (i.get("detail") or {}).get("waiting_for"),
            }
            for key, i in items.items()
            if _waiting_sides(i)
        ]
        return {
            "vault": str(vault.path),
            "exists": vault.exists(),
            "users": rows,
            # Each side's master user password, where one is set: its login and when.
            "master": {side: masters.get(side) for side in SIDES},
            # Each xoauth2 side's OAuth client, where one is set: its client id and when.
            "oauth_app": {side: apps.get(side) for side in SIDES},
            "waiting": waiting,
        }
    finally:
        journal.close()


def _address(items: Mapping[str, Mapping[str, Any]], key: str) -> str:
    item = items.get(key) or {}
    return str(item.get("source_address") or key)


def credentials_purge(
    directory: Path | None,
    *,
    users: list[str] | None = None,
    all_users: bool = False,
    master: bool = False,
    side: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Remove credentials: every one (`all_users`: the vault file is deleted, no key needed),
    the named users', or the master user passwords (`master`: of `side`, else both). The
    journal keeps its users; only their passwords go."""
    if sum((all_users, users is not None, master)) > 1:
        raise InputError(
            "credentials purge: pass one of --users, --master or --all",
            next_step="coexist credentials purge --all",
        )
    named = None if users is None else [u.strip() for u in users if u.strip()]
    if not all_users and not master and not named:
        raise InputError(
            "credentials purge: name the users (--users a@example.com), say --master (the "
            "master user passwords) or --all (every credential of the project, when it ends)",
            next_step="coexist credentials purge --all",
        )
    if side is not None and (not master or side not in SIDES):
        raise InputError(
            f"credentials purge: --side {side} goes with --master (source or target)",
            next_step="coexist credentials purge --master --side source",
        )
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        if master:
            return _purge_master(project, journal, (side,) if side else SIDES, env)
        if all_users:
            existed = Vault(project.directory, None).destroy()
            if existed:
                journal.event(None, "info", "credentials purged: the vault was deleted")
            return {"purged": "all", "vault_deleted": existed}
        assert named is not None
        chosen = batches.select(journal.items(kind="user"), named, what="credentials purge")
        vault = Vault(project.directory, None)
        if not vault.exists():
            return {"purged": [], "vault_deleted": False}
        gone = Vault.open(project.directory, env=env).remove([str(i["key"]) for i in chosen])
        addresses = [_address({str(i["key"]): i for i in chosen}, k) for k in gone]
        if gone:
            journal.event(
                None,
                "info",
                f"credentials purged for {len(gone)} user(s)",
                data={"users": addresses},
            )
        return {"purged": addresses, "vault_deleted": False}
    finally:
        journal.close()


def _purge_master(
    project: Project, journal: Journal, sides: tuple[str, ...], env: Mapping[str, str] | None
) -> dict[str, Any]:
    """Remove the master user password of these sides (`credentials purge --master`)."""
    if not Vault(project.directory, None).exists():
        return {"purged": [], "master": [], "vault_deleted": False}
    vault = Vault.open(project.directory, env=env)
    had = sorted(set(vault.read().get(MASTER_ENTRY, {})) & set(sides))
    vault.remove([MASTER_ENTRY], sides)
    if had:
        journal.event(None, "info", f"credentials purged: master user password ({', '.join(had)})")
    return {"purged": [], "master": had, "vault_deleted": False}
