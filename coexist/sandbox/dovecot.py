"""A throwaway Dovecot IMAP server: `coexist demo --scenario imap` and the tests start one.

Dovecot is a real IMAP server (DESIGN.md, "The sandbox": where a real server exists, use it
instead of imitating one). The binaries come from the distribution packages (``apt-get
install dovecot-core dovecot-imapd``, which `make test` runs through `make system-deps`);
without them `binaries()` raises a ConfigError saying so.

What it serves, all on 127.0.0.1 under a private temp dir (config, sockets, state, log, mail),
removed again by `stop()`:
- IMAP with STARTTLS (`port`) and implicit TLS (`tls_port`), certificate signed by a CA made
  with trustme, as the HTTPS sandbox's is (`ca_file` is its PEM; pass `ca=` to share a CA),
  for the name ``127.0.0.1`` only, so connecting to ``localhost`` is a real TLS name
  mismatch;
- passwd-file users with PLAIN passwords, maildir homes (``maildir:~/Maildir``), hierarchy
  separator ``/`` (another per user: `add_user(separator=)`); special-use folders (RFC 6154)
  Drafts, Sent, Trash, Junk, Archive;
- a master user (``user*master`` logs in as ``user`` with the master's password: Dovecot's
  "Master users/passwords" page, `auth_master_user_separator`);
- XOAUTH2 / OAUTHBEARER with JWTs it validates itself (`oauth_token`).

The passwords are the demo's and the tests' own, in the temp dir only as Dovecot's
passwd-files need them. As root, Dovecot will not deliver mail as root: the mail belongs to
``nobody``. As another user, every process and mailbox runs as that user.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import jwt
import trustme

from coexist.errors import ConfigError, RemoteError

PACKAGES = "dovecot-core dovecot-imapd"
INSTALL_HINT = (
    "Dovecot (dovecot, doveadm) was not found on PATH or in /usr/sbin. Install it with "
    f"`sudo apt install {PACKAGES}` (`make test` installs it when missing)."
)
MASTER_USER = "migrator"
# Seconds to wait for Dovecot to listen (it takes well under one here; a loaded machine can
# be much slower, and a generous bound costs nothing when things work).
START_TIMEOUT_S = 60.0
DOVEADM_TIMEOUT_S = 120.0
# Where the packages put the binaries when PATH lacks them (a non-root shell has no sbin).
SYSTEM_DIRS = "/usr/sbin:/usr/bin"


def find_binary(name: str) -> Path | None:
    """The path of a Dovecot binary, or None when Dovecot is not installed."""
    found = shutil.which(name) or shutil.which(name, path=SYSTEM_DIRS)
    return Path(found) if found else None


def binaries() -> tuple[Path, Path]:
    """(dovecot, doveadm), or a ConfigError naming the packages to install."""
    dovecot, doveadm = find_binary("dovecot"), find_binary("doveadm")
    if dovecot is None or doveadm is None:
        raise ConfigError(
            INSTALL_HINT,
            file="dovecot" if dovecot is None else "doveadm",
            next_step=f"sudo apt install {PACKAGES}   (or: make test)",
        )
    return dovecot, doveadm


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ImapUser:
    """A mailbox on the Dovecot: its login and password."""

    login: str
    password: str = field(repr=False)


class DovecotServer:
    """One Dovecot under a private temp dir; `start()` / `stop()`, `add_user()`, `doveadm()`."""

    def __init__(
        self,
        dovecot: Path,
        doveadm: Path,
        *,
        ca: trustme.CA | None = None,
        name: str = "coexist",
        archive: bool = False,
        imap_capability: str | None = None,
        rawlog: bool = False,
    ) -> None:
        self.dovecot = dovecot
        self.doveadm_bin = doveadm
        self.name = name
        self.root = Path(tempfile.mkdtemp(prefix=f"{name}-dovecot-"))
        # Dovecot's unprivileged processes (auth, login, imap as the mail user) open paths
        # under this dir after dropping root: mkdtemp's 0700 would lock them out.
        self.root.chmod(0o755)
        self.conf = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.users_dir = self.root / "users"
        self.masters_file = self.root / "masters"
        self.homes = self.root / "home"
        self.ca_file = self.root / "ca.pem"
        self.host = "127.0.0.1"
        self.port = 0
        self.tls_port = 0
        self.master_password = "master-" + os.urandom(6).hex()
        self._ca = ca
        # Whether every mailbox has its \Archive folder from the start, as a mail system a
        # migration moves into has (Dovecot creates it at first login: `auto = create`).
        self._archive = archive
        # Dovecot's `imap_capability`: "Override the IMAP CAPABILITY response. If the value
        # begins with '+', add the given capabilities on top of the defaults"
        # (conf.d/20-imap.conf). A full list stands in for a server that lacks an extension
        # (tests: one without UNSELECT); Dovecot still answers the commands it leaves out.
        self._imap_capability = imap_capability
        # Dovecot's rawlog (`rawlog_dir`, 2.2.26+): what each IMAP session received and sent,
        # one `.in` / `.out` file pair per connection in the user's `~/rawlog` (`client_lines`):
        # the commands a client really sent, as the server read them.
        self._rawlog = rawlog
        self._jwt_key = os.urandom(32)
        self._proc: subprocess.Popen[bytes] | None = None
        self._ids = count(1)
        self._as_root = os.geteuid() == 0
        me = pwd.getpwuid(os.geteuid())
        # As root the mail belongs to nobody (Dovecot refuses uid 0 for mail).
        self.mail_uid, self.mail_gid = (65534, 65534) if self._as_root else (me.pw_uid, me.pw_gid)
        self._service_user = "" if self._as_root else me.pw_name

    # -- setup -------------------------------------------------------------------
    def _write_tls(self) -> tuple[Path, Path]:
        ca = self._ca or trustme.CA(organization_name=f"{self.name} dovecot")
        cert = ca.issue_cert("127.0.0.1")
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert_path, key_path = self.root / "server.crt", self.root / "server.key"
        cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)
        return cert_path, key_path

    def _write_oauth2(self) -> None:
        """XOAUTH2 tokens are JWTs (HS256) Dovecot checks itself ("local validation",
        Dovecot 2.3.11+: the key is looked up as /shared/<azp>/<alg>/<kid>, base64)."""
        keys = self.root / "oauth2-keys" / "default" / "HS256"
        keys.mkdir(parents=True)
        (keys / "default").write_text(base64.b64encode(self._jwt_key).decode())
        (self.root / "oauth2.conf").write_text(
            "introspection_mode = local\n"
            f"local_validation_key_dict = fs:posix:prefix={self.root}/oauth2-keys/\n"
            "username_attribute = sub\n"
        )

    def oauth_token(self, user: ImapUser, *, lifetime_s: int = 600) -> str:
        """An access token for `user` that this Dovecot accepts for XOAUTH2."""
        now = int(time.time())
        claims = {"sub": user.login, "iat": now, "nbf": now, "exp": now + lifetime_s}
        return jwt.encode(claims, self._jwt_key, algorithm="HS256")

    def _config(self, cert: Path, key: Path) -> str:
        users = self._service_user
        # Not root: every Dovecot service runs as this user (its default users do not exist
        # for us); as root the package's dovecot / dovenull users are used.
        service_users = (
            f"default_internal_user = {users}\ndefault_login_user = {users}\n" if users else ""
        )
        return f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{service_users}first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
auth_mechanisms = plain login xoauth2 oauthbearer
# A refused login is answered at once: Dovecot delays every failed authentication by 2 s and,
# through anvil's auth penalty, doubles that per client IP up to 15 s, a brute-force brake
# (doc.dovecot.org, "Authentication penalty support": disabled by the listener's mode 0).
# This server is the sandbox's (demos and tests refuse logins on purpose, all from
# 127.0.0.1); what it refuses is unchanged.
auth_failure_delay = 0
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
auth_master_user_separator = *
passdb {{
  driver = passwd-file
  args = {self.masters_file}
  master = yes
  result_success = continue
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.root}/oauth2.conf
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = {self.users_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = {self.users_dir}/%u
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Archive {{
    special_use = \\Archive
{"    auto = create" if self._archive else ""}
  }}
}}
{self._capability_block()}service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}
}}
"""

    def _capability_block(self) -> str:
        settings = []
        if self._imap_capability is not None:
            settings.append(f"imap_capability = {self._imap_capability}")
        if self._rawlog:
            settings.append("rawlog_dir = %h/rawlog")
        if not settings:
            return ""
        return "protocol imap {\n" + "".join(f"  {x}\n" for x in settings) + "}\n"

    def client_lines(self, user: ImapUser) -> list[list[str]]:
        """Per IMAP connection of `user` (oldest first), the lines the server read from the
        client (`rawlog`; the LOGIN line's password is Dovecot's to hide: it writes
        "<hidden>" in its place)."""
        logs = sorted((self.homes / user.login / "rawlog").glob("*.in"))
        return [f.read_bytes().decode("utf-8", "replace").splitlines() for f in logs]

    def start(self) -> DovecotServer:
        """Write the config, start Dovecot in the foreground of a child process and wait
        until both ports listen; a ConfigError with its log when it does not."""
        (self.root / "state").mkdir()
        self.homes.mkdir()
        self.users_dir.mkdir()
        # A master user's passdb needs no userdb: it only vouches for the login.
        self.masters_file.write_text(f"{MASTER_USER}:{{PLAIN}}{self.master_password}\n")
        if self._as_root:
            shutil.chown(self.homes, user=self.mail_uid, group=self.mail_gid)
        cert, key = self._write_tls()
        self._write_oauth2()
        self.port, self.tls_port = _free_port(), _free_port()
        self.conf.write_text(self._config(cert, key))
        with (self.root / "stderr.log").open("wb") as stderr:
            self._proc = subprocess.Popen(
                [str(self.dovecot), "-F", "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise self._failed(f"dovecot exited ({self._proc.returncode})")
            try:
                for port in (self.port, self.tls_port):
                    socket.create_connection((self.host, port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise self._failed(f"dovecot did not listen within {START_TIMEOUT_S:g} s")

    def _failed(self, what: str) -> ConfigError:
        return ConfigError(
            f"{what}:\n{self._logs()}",
            file=str(self.conf),
            next_step=f"read {self.log}; check the install with `dovecot -n -c {self.conf}`",
        )

    def _logs(self) -> str:
        parts = [
            p.read_text(errors="replace")
            for p in (self.log, self.root / "stderr.log")
            if p.exists()
        ]
        return "".join(parts)

    def stop(self) -> None:
        """Stop Dovecot and remove its directory (mail, users, certificates)."""
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- use ---------------------------------------------------------------------
    def new_user(
        self, prefix: str = "user", *, separator: str = "/", acl: bool = False
    ) -> ImapUser:
        """A fresh, empty mailbox named `prefix` + a counter, with a random password."""
        return self.add_user(f"{prefix}{next(self._ids)}", separator=separator, acl=acl)

    def add_user(
        self, login: str, password: str | None = None, *, separator: str = "/", acl: bool = False
    ) -> ImapUser:
        """A fresh, empty mailbox `login` (a random password unless given).

        One passwd-file per user (`args = .../%u`): Dovecot re-reads a changed passwd-file
        at most once a second, so a user appended to a shared file can be unknown for that
        second; a file nobody looked up yet is read at its first lookup.

        `separator` other than "/" gives this user that hierarchy delimiter (a userdb
        override of the inbox namespace) over Dovecot's index layout, where a folder name
        may hold any other character, "/" included (Dovecot "Mailbox formats: Maildir",
        LAYOUT=index).

        `acl` loads Dovecot's ACL plugin for this user (`vfile`: a folder's rights are in
        its `dovecot-acl` file, `folder_rights`); without such a file the owner has every
        right, as without the plugin."""
        password = password or "pw-" + os.urandom(6).hex()
        home = self.homes / login
        home.mkdir()
        if self._as_root:
            shutil.chown(home, user=self.mail_uid, group=self.mail_gid)
        if self._rawlog:  # Dovecot writes a rawlog only into a directory that exists
            (home / "rawlog").mkdir()
            if self._as_root:
                shutil.chown(home / "rawlog", user=self.mail_uid, group=self.mail_gid)
        extra = ""
        if separator != "/":
            extra = (
                "userdb_mail=maildir:~/Maildir:LAYOUT=index "
                f"userdb_namespace/inbox/separator={separator}"
            )
        if acl:
            extra = f"{extra} userdb_mail_plugins=acl userdb_acl=vfile".strip()
        line = f"{login}:{{PLAIN}}{password}:{self.mail_uid}:{self.mail_gid}::{home}::{extra}\n"
        (self.users_dir / login).write_text(line)
        return ImapUser(login, password)

    def folder_rights(self, user: ImapUser, folder: str, rights: str) -> None:
        """Give the owner of a user made with `acl` only these rights on an existing folder
        (Dovecot ACL letters, e.g. "lrsitekxa": all but "w", so no flag but \\Seen and
        \\Deleted and no keyword is kept). Maildir++ layout ("/" separator) only. Read by
        the user's next login (each runs its own imap process)."""
        path = self.homes / user.login / "Maildir" / ("." + folder.replace("/", "."))
        (path / "dovecot-acl").write_text(f"owner {rights}\n")

    def set_uidvalidity(self, user: ImapUser, folder: str, value: int) -> None:
        """Give a folder a new UIDVALIDITY, as a server restored from a backup does."""
        self.doveadm("mailbox", "update", "-u", user.login, "--uid-validity", str(value), folder)

    def doveadm(self, *args: str) -> str:
        """Run `doveadm` against this server's config; its output, or a RemoteError."""
        proc = subprocess.run(
            [str(self.doveadm_bin), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=DOVEADM_TIMEOUT_S,
        )
        if proc.returncode != 0:
            raise RemoteError(
                f"doveadm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}",
                service="dovecot",
            )
        return proc.stdout


@contextmanager
def running_dovecot(
    *,
    ca: trustme.CA | None = None,
    name: str = "coexist",
    archive: bool = False,
    imap_capability: str | None = None,
    rawlog: bool = False,
) -> Iterator[DovecotServer]:
    """Start a Dovecot, yield it, stop it (ConfigError when Dovecot is not installed);
    `imap_capability`, `rawlog`: see DovecotServer."""
    dovecot, doveadm = binaries()
    server = DovecotServer(
        dovecot,
        doveadm,
        ca=ca,
        name=name,
        archive=archive,
        imap_capability=imap_capability,
        rawlog=rawlog,
    )
    try:
        yield server.start()
    finally:
        server.stop()
