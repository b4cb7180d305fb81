"""project.toml: written documented by init, validated on load, secrets only from the env."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from coexist import settings
from coexist.errors import ConfigError
from coexist.settings import (
    SECTION_TYPES,
    SETTINGS,
    convert,
    describe,
    load_project,
    parse_duration,
    render_template,
    write_project,
)

SRC_TID = "11111111-1111-1111-1111-111111111111"
SRC_CID = "22222222-2222-2222-2222-222222222222"
TGT_TID = "33333333-3333-3333-3333-333333333333"
TGT_CID = "44444444-4444-4444-4444-444444444444"
SECRET = "s3cr3t-Value~42"

# The values a new project must be given before it loads.
REQUIRED = {
    "source.tenant_id": SRC_TID,
    "source.client_id": SRC_CID,
    "target.tenant_id": TGT_TID,
    "target.client_id": TGT_CID,
    "domains.destination_domain": "fabrikam.com",
}

BASE = f"""\
[source]
tenant_id = "{SRC_TID}"
client_id = "{SRC_CID}"

[target]
tenant_id = "{TGT_TID}"
client_id = "{TGT_CID}"

[domains]
destination_domain = "fabrikam.com"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "project.toml"
    path.write_text(text)
    return path


def _with(section: str, line: str, text: str = BASE) -> str:
    """BASE with `line` added to `[section]` (the section is appended when absent)."""
    header = f"[{section}]\n"
    if header in text:
        return text.replace(header, header + line + "\n", 1)
    return text + f"\n{header}{line}\n"


def _load_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path, env=env or {})
    assert info.value.fields["file"] == str(path.resolve())
    return info.value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A TOML document as dotted keys (a kind's table, [source.imap], nests in its side's)."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


# -- init ----------------------------------------------------------------------------
def test_init_round_trip_loads_back_to_defaults(tmp_path: Path) -> None:
    """A file written by init holds every default and loads back to exactly those values."""
    path = write_project(tmp_path, overrides=REQUIRED)
    on_disk = tomllib.loads(path.read_text())
    flat = _flatten(on_disk)
    expected = {s.key: s.default for s in SETTINGS} | REQUIRED | {"project.name": tmp_path.name}
    assert flat == expected

    project = load_project(tmp_path, env={})
    for s in SETTINGS:
        assert project.value(s.key) == convert(s, expected[s.key], tmp_path), s.key
    assert project.prestage.older_than == timedelta(days=90)
    assert project.groups.copy == ("distribution", "mail-security", "security", "dynamic")
    assert project.cutover.mode == "forward-on-source"
    assert project.migration.mover == "graph-import-export"  # full fidelity, m365 -> m365
    assert project.file == path.resolve()


def test_init_documents_every_setting_with_its_help(tmp_path: Path) -> None:
    """Every declared key appears in its table with its help text and env var as comments."""
    text = write_project(tmp_path).read_text()
    comments = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    doc = tomllib.loads(text)
    flat = _flatten(doc)
    for s in SETTINGS:
        assert s.key in flat, s.key
        assert s.help in comments, s.key
        if s.env:
            assert f"env: {s.env}" in comments, s.key
        if s.choices:
            assert " | ".join(s.choices) in comments, s.key
    for section, help_text in settings.SECTIONS.items():
        assert f"\n[{section}]\n" in text
        assert help_text in comments


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    """A second init names the existing file; force replaces it."""
    path = write_project(tmp_path)
    path.write_text("# edited\n")
    with pytest.raises(ConfigError) as info:
        write_project(tmp_path)
    assert info.value.fields["file"] == str(path)
    assert path.read_text() == "# edited\n"
    write_project(tmp_path, force=True, overrides=REQUIRED)
    assert load_project(tmp_path, env={}).domains.destination_domain == "fabrikam.com"


def test_init_checks_overrides(tmp_path: Path) -> None:
    """An unknown override key gets a suggestion; a wrong value names its key."""
    with pytest.raises(ConfigError, match=r"did you mean 'domains\.destination_domain'"):
        write_project(tmp_path, overrides={"domains.destination_domian": "x.com"})
    with pytest.raises(ConfigError) as info:
        write_project(tmp_path, overrides={"cutover.mode": "rename"})
    assert info.value.fields["key"] == "cutover.mode"
    assert not (tmp_path / "project.toml").exists()


def test_render_template_escapes_strings() -> None:
    """Quotes, backslashes and control characters survive a render and parse round trip."""
    tricky = 'Sales "EU" \\ team\t\x7f'
    text = render_template(REQUIRED | {"scope.group": tricky})
    assert tomllib.loads(text)["scope"]["group"] == tricky


def test_describe_lists_every_setting() -> None:
    """describe() gives docs one row per declared setting, with help and env var."""
    rows = describe()
    assert [r["key"] for r in rows] == [s.key for s in SETTINGS]
    assert all(r["help"] for r in rows)
    journal = next(r for r in rows if r["key"] == "project.journal")
    assert journal["env"] == "COEXIST_JOURNAL_URL"
    json.dumps(rows)


def test_section_dataclasses_match_the_table() -> None:
    """Each typed section has exactly the declared settings as fields (one declaration)."""
    internal = {"side", "client_secret", "file", *settings.KIND_TABLES}
    for section, cls in SECTION_TYPES.items():
        fields = {f.name for f in dataclasses.fields(cls)} - internal  # type: ignore[arg-type]
        assert fields == {s.name for s in SETTINGS if s.section == section}, section


# -- load errors ---------------------------------------------------------------------
def test_missing_project_file_says_run_init(tmp_path: Path) -> None:
    """Loading a directory without project.toml names the file and the init command."""
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path, env={})
    assert info.value.next_step == f"coexist init {tmp_path}"


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error reports the file, line and column."""
    text = BASE.replace('destination_domain = "fabrikam.com"', "destination_domain = fabrikam.com")
    err = _load_error(tmp_path, text)
    line = text.splitlines().index("destination_domain = fabrikam.com") + 1
    assert err.fields["line"] == line
    assert err.fields["column"] is not None
    assert f"line {line}" in str(err)


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    """A misspelt key names file and key and suggests the declared one."""
    err = _load_error(tmp_path, _with("source", 'tenat_id = "x"'))
    assert err.fields["key"] == "source.tenat_id"
    assert "did you mean 'tenant_id'" in str(err)


def test_unknown_section_and_misplaced_key(tmp_path: Path) -> None:
    """A misspelt table is suggested; a key in the wrong table says where it belongs."""
    err = _load_error(tmp_path, BASE + '\n[domain]\nsource_forwarding_domain = "x.com"\n')
    assert err.fields["key"] == "domain"
    assert "did you mean [domains]" in str(err)
    err = _load_error(tmp_path, _with("scope", 'destination_domain = "x.com"'))
    assert err.fields["key"] == "scope.destination_domain"
    assert "belongs in [domains]" in str(err)


@pytest.mark.parametrize(
    ("section", "line", "key", "words"),
    [
        ("project", 'batch_size = "50"', "project.batch_size", "whole number"),
        ("engine", "concurrency_per_tenant = 0", "engine.concurrency_per_tenant", "at least 1"),
        ("prestage", 'convert = "yes"', "prestage.convert", "true or false"),
        ("groups", 'copy = "distribution"', "groups.copy", "list"),
        ("prestage", 'older_than = "3 months"', "prestage.older_than", "not a duration"),
        ("prestage", 'usage_location = "USA"', "prestage.usage_location", "two-letter"),
        ("project", 'journal = "mysql://db/x"', "project.journal", "postgresql://"),
        ("verify", 'service_mailbox = "probe"', "verify.service_mailbox", "email address"),
        ("cutover", 'rename_prefix = ""', "cutover.rename_prefix", "must not be blank"),
    ],
)
def test_wrong_value_names_file_and_key(
    tmp_path: Path, section: str, line: str, key: str, words: str
) -> None:
    """A value of the wrong type or shape names file and key and says what is expected."""
    err = _load_error(tmp_path, _with(section, line))
    assert err.fields["key"] == key
    assert words in str(err)


def test_wrong_tenant_id_and_https_only_endpoints(tmp_path: Path) -> None:
    """Tenant ids must be a GUID or domain; endpoints must be https (TLS always on)."""
    err = _load_error(tmp_path, BASE.replace(SRC_TID, "not a tenant"))
    assert err.fields["key"] == "source.tenant_id"
    err = _load_error(tmp_path, _with("target", 'graph_url = "http://graph.example/v1.0"'))
    assert err.fields["key"] == "target.graph_url"
    assert "https://" in str(err)


def test_bad_choice_suggests_a_valid_one(tmp_path: Path) -> None:
    """A value outside the choices lists them and suggests the nearest."""
    err = _load_error(tmp_path, _with("cutover", 'mode = "forward_on_source"'))
    assert err.fields["key"] == "cutover.mode"
    assert "did you mean 'forward-on-source'" in str(err)
    err = _load_error(tmp_path, _with("groups", 'copy = ["distribution", "mail-enabled"]'))
    assert err.fields["key"] == "groups.copy"
    assert "mail-security" in str(err)


def test_missing_destination_domain(tmp_path: Path) -> None:
    """destination_domain is required, and the error says where to set it."""
    err = _load_error(tmp_path, BASE.replace('destination_domain = "fabrikam.com"', ""))
    assert err.fields["key"] == "domains.destination_domain"
    assert "missing required value" in str(err)
    assert err.next_step and "[domains]" in err.next_step


def test_missing_tenant_identity(tmp_path: Path) -> None:
    """Without sandbox_connection a tenant needs its tenant and client ids."""
    err = _load_error(tmp_path, BASE.replace(f'client_id = "{TGT_CID}"', ""))
    assert err.fields["key"] == "target.client_id"


@pytest.mark.parametrize(
    ("section", "key", "env_hint"),
    [
        ("source", "client_secret", "COEXIST_SOURCE_CLIENT_SECRET"),
        ("target", "password", "COEXIST_TARGET_CLIENT_SECRET"),
        ("project", "password", "COEXIST_JOURNAL_URL"),
        ("verify", "secret", "environment variables"),
    ],
)
def test_literal_secret_is_refused(tmp_path: Path, section: str, key: str, env_hint: str) -> None:
    """A secret written in the file is refused, names the env var to use, never echoes it."""
    err = _load_error(tmp_path, _with(section, f'{key} = "{SECRET}"'))
    assert err.fields["key"] == f"{section}.{key}"
    assert env_hint in str(err)
    assert SECRET not in str(err)
    assert SECRET not in json.dumps(err.to_dict())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (_with("source", "verify = false"), "source.verify"),
        (_with("target", "insecure = true"), "target.insecure"),
        (_with("engine", "ssl_verify = false"), "engine.ssl_verify"),
        ("verify_tls = false\n" + BASE, "verify_tls"),
    ],
)
def test_turning_tls_verification_off_is_refused(tmp_path: Path, text: str, key: str) -> None:
    """Any verify-off style key is refused and points at ca_file instead."""
    err = _load_error(tmp_path, text)
    assert err.fields["key"] == key
    assert "cannot be turned off" in str(err)
    assert "ca_file" in str(err)


def test_client_secret_env_must_be_a_name_and_is_not_echoed(tmp_path: Path) -> None:
    """A secret pasted into client_secret_env is refused without repeating it."""
    pasted = "Abc~12.xyz-SECRET"
    err = _load_error(tmp_path, _with("source", f'client_secret_env = "{pasted}"'))
    assert err.fields["key"] == "source.client_secret_env"
    assert pasted not in str(err)
    assert "NAME of an environment variable" in str(err)


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("target", f'tenant_id = "{SRC_TID}"', "target.tenant_id"),
        ("mail_users", "forward_matched_to_source = true", "mail_users.forward_matched_to_source"),
        (
            "domains",
            'source_forwarding_domain = "fabrikam.com"',
            "domains.source_forwarding_domain",
        ),
    ],
)
def test_contradictory_settings(tmp_path: Path, section: str, line: str, key: str) -> None:
    """Settings that contradict each other are refused, naming the key to change."""
    text = BASE.replace(f'tenant_id = "{TGT_TID}"\n', "") if key == "target.tenant_id" else BASE
    err = _load_error(tmp_path, _with(section, line, text))
    assert err.fields["key"] == key
    assert "contradictory" in str(err)


def test_journal_password_only_from_environment(tmp_path: Path) -> None:
    """A journal password in the file is refused; from COEXIST_JOURNAL_URL it works, masked."""
    url = "postgresql://coexist:hunter2@db.example/coexist"
    err = _load_error(tmp_path, _with("project", f'journal = "{url}"'))
    assert err.fields["key"] == "project.journal"
    assert "hunter2" not in str(err)

    _write(tmp_path, BASE)
    project = load_project(tmp_path, env={"COEXIST_JOURNAL_URL": url})
    assert project.journal_url == url
    shown = repr(project) + json.dumps(project.to_dict())
    assert "hunter2" not in shown
    assert "coexist:***@db.example" in shown


# -- environment ---------------------------------------------------------------------
def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """Declared env vars win over the file and are converted to the setting's type."""
    _write(tmp_path, BASE)
    other = "55555555-5555-5555-5555-555555555555"
    env = {
        "COEXIST_SOURCE_TENANT_ID": other,
        "COEXIST_CONCURRENCY_PER_TENANT": "3",
        "COEXIST_TARGET_GRAPH_URL": "https://graph.microsoft.us/v1.0/",
        "COEXIST_SOURCE_CLIENT_ID": "",  # empty counts as unset
    }
    project = load_project(tmp_path, env=env)
    assert project.source.tenant_id == other
    assert project.source.client_id == SRC_CID
    assert project.engine.concurrency_per_tenant == 3
    assert project.target.graph_url == "https://graph.microsoft.us/v1.0"


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    """An invalid env override names the variable as well as file and key."""
    err = _load_error(tmp_path, BASE, env={"COEXIST_CONCURRENCY_PER_TENANT": "many"})
    assert err.fields["key"] == "engine.concurrency_per_tenant"
    assert "COEXIST_CONCURRENCY_PER_TENANT" in str(err)


def test_secret_comes_from_env_and_is_never_shown(tmp_path: Path) -> None:
    """The client secret is read from the named env var, used by the endpoint, never shown."""
    text = _with("target", 'client_secret_env = "FABRIKAM_APP_SECRET"')
    _write(tmp_path, text)
    env = {"COEXIST_SOURCE_CLIENT_SECRET": SECRET, "FABRIKAM_APP_SECRET": SECRET + "-t"}
    project = load_project(tmp_path, env=env)
    assert project.source.client_secret == SECRET
    assert project.target.client_secret == SECRET + "-t"
    source = project.endpoint("source")
    assert source.client_secret == SECRET
    assert (source.tenant_id, source.client_id) == (SRC_TID, SRC_CID)
    assert source.invoke_url.endswith(f"/adminapi/beta/{SRC_TID}/InvokeCommand")
    shown = " ".join(
        [repr(project), repr(project.source), repr(source), json.dumps(project.to_dict())]
    )
    assert SECRET not in shown
    assert project.to_dict()["source"]["client_secret_found"] is True


def test_no_credential_is_reported_when_the_endpoint_is_built(tmp_path: Path) -> None:
    """Without certificate or secret, endpoint() names the env var to set."""
    _write(tmp_path, BASE)
    project = load_project(tmp_path, env={})
    with pytest.raises(ConfigError) as info:
        project.endpoint("target")
    assert info.value.fields["key"] == "target.certificate_file"
    assert info.value.next_step and "COEXIST_TARGET_CLIENT_SECRET" in info.value.next_step


def test_relative_files_resolve_against_the_project(tmp_path: Path) -> None:
    """certificate_file and ca_file may be relative; the certificate wins over a secret."""
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "src.pem").write_text("pem")
    (tmp_path / "ca.pem").write_text("pem")
    text = _with("source", 'certificate_file = "certs/src.pem"\nca_file = "ca.pem"')
    _write(tmp_path, text)
    project = load_project(tmp_path, env={"COEXIST_SOURCE_CLIENT_SECRET": SECRET})
    ep = project.endpoint("source")
    assert ep.certificate_file == str(tmp_path.resolve() / "certs" / "src.pem")
    assert ep.ca_file == str(tmp_path.resolve() / "ca.pem")
    assert ep.client_secret is None


def test_missing_certificate_file_is_reported_by_key(tmp_path: Path) -> None:
    """A certificate_file that does not exist names file and key when the endpoint is built."""
    _write(tmp_path, _with("target", 'certificate_file = "nope.pem"'))
    project = load_project(tmp_path, env={})
    with pytest.raises(ConfigError) as info:
        project.endpoint("target")
    assert info.value.fields["key"] == "target.certificate_file"


# -- sandbox -------------------------------------------------------------------------
def _connection(directory: Path) -> Path:
    directory.mkdir()
    tenants: dict[str, Any] = {}
    for side, tid, cid in (("source", SRC_TID, SRC_CID), ("target", TGT_TID, TGT_CID)):
        tenants[side] = {
            "tenant_id": tid,
            "authority": "https://127.0.0.1:8443",
            "graph_url": "https://127.0.0.1:8443/v1.0",
            "exo_url": f"https://127.0.0.1:8443/adminapi/beta/{tid}/InvokeCommand",
            "client_id": cid,
            "client_secret": "sandbox-only",
            "certificate_file": f"{side}-app.pem",
        }
    path = directory / "connection.json"
    path.write_text(json.dumps({"ca_file": "ca.pem", "tenants": tenants}))
    return path


SANDBOX = """\
[source]
sandbox_connection = "sandbox/connection.json"

[target]
sandbox_connection = "sandbox/connection.json"

[domains]
destination_domain = "fabrikam.com"
"""


def test_sandbox_connection_supplies_the_endpoints(tmp_path: Path) -> None:
    """With sandbox_connection, ids, endpoints, certificate and CA come from connection.json."""
    conn = _connection(tmp_path / "sandbox")
    _write(tmp_path, SANDBOX)
    project = load_project(tmp_path, env={})
    for side, tid, cid in (("source", SRC_TID, SRC_CID), ("target", TGT_TID, TGT_CID)):
        ep = project.endpoint(side)
        assert (ep.tenant_id, ep.client_id) == (tid, cid)
        assert ep.authority == "https://127.0.0.1:8443"
        assert ep.graph_url == "https://127.0.0.1:8443/v1.0"
        assert ep.invoke_url == f"https://127.0.0.1:8443/adminapi/beta/{tid}/InvokeCommand"
        assert ep.ca_file == str(conn.parent / "ca.pem")
        assert ep.certificate_file == str(conn.parent / f"{side}-app.pem")
        assert ep.client_secret is None


def test_sandbox_connection_missing_says_how_to_start_it(tmp_path: Path) -> None:
    """A missing connection.json is reported by key with the command that writes it."""
    _write(tmp_path, SANDBOX)
    project = load_project(tmp_path, env={})
    with pytest.raises(ConfigError) as info:
        project.endpoint("source")
    assert info.value.fields["key"] == "source.sandbox_connection"
    assert info.value.next_step and "coexist sandbox serve" in info.value.next_step


def test_sandbox_connection_conflicts_with_explicit_identity(tmp_path: Path) -> None:
    """Setting tenant_id next to sandbox_connection is contradictory."""
    err = _load_error(tmp_path, _with("source", f'tenant_id = "{SRC_TID}"', SANDBOX))
    assert err.fields["key"] == "source.tenant_id"
    assert "sandbox_connection" in str(err)


# -- values --------------------------------------------------------------------------
def test_parse_duration() -> None:
    """Durations take a number and a unit (w d h m s), combinable; others are refused."""
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("1d12h") == timedelta(days=1, hours=12)
    assert parse_duration("2W") == timedelta(weeks=2)
    for bad in ("", "90", "d", "-1d", "90x", "1.5d", "90 days"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_journal_url_defaults_to_sqlite_in_the_project(tmp_path: Path) -> None:
    """A blank journal is journal.db in the project dir; relative SQLite paths resolve there."""
    _write(tmp_path, BASE)
    project = load_project(tmp_path, env={})
    assert project.journal_url == f"sqlite:///{tmp_path.resolve() / 'journal.db'}"
    _write(tmp_path, _with("project", 'journal = "sqlite:///state/j.db"'))
    project = load_project(tmp_path / "project.toml", env={})
    assert project.journal_url == f"sqlite:///{tmp_path.resolve() / 'state' / 'j.db'}"


def test_normalised_values(tmp_path: Path) -> None:
    """Domains are lower-cased, country codes upper-cased, scope group kept exactly."""
    text = _with("prestage", 'usage_location = "us"', BASE.replace("fabrikam.com", "Fabrikam.COM"))
    text = _with("scope", 'group = "Migration Wave 1 "', text)
    _write(tmp_path, text)
    project = load_project(tmp_path, env={})
    assert project.domains.destination_domain == "fabrikam.com"
    assert project.prestage.usage_location == "US"
    assert project.scope.group == "Migration Wave 1 "
    assert project.project.name == tmp_path.name


# -- endpoint kinds ----------------------------------------------------------------------
IMAP_SOURCE = f"""\
[source]
kind = "imap"

[source.imap]
host = "IMAP.Example.org"

[target]
tenant_id = "{TGT_TID}"
client_id = "{TGT_CID}"

[domains]
destination_domain = "fabrikam.com"
"""


IMAP_TO_IMAP = """\
[source]
kind = "imap"

[source.imap]
host = "old.example.org"

[target]
kind = "imap"

[target.imap]
host = "new.example.org"
"""


def test_destination_domain_is_required_only_for_a_microsoft_365_target(tmp_path: Path) -> None:
    """An imap -> imap project loads without [domains] destination_domain (no step of it
    reads the target tenant's domain), and a step that would read it gets the ConfigError
    naming it; an imap -> m365 project still needs it at load, saying why."""
    _write(tmp_path, IMAP_TO_IMAP)
    project = load_project(tmp_path, env={})
    assert project.domains.destination_domain is None
    with pytest.raises(ConfigError) as info:
        _ = project.destination_domain
    assert info.value.fields["key"] == "domains.destination_domain"
    err = _load_error(tmp_path, IMAP_SOURCE.replace('destination_domain = "fabrikam.com"', ""))
    assert err.fields["key"] == "domains.destination_domain"
    assert '[target] kind = "m365"' in str(err)
    _write(tmp_path, _with("domains", 'destination_domain = "fabrikam.com"', IMAP_TO_IMAP))
    assert load_project(tmp_path, env={}).destination_domain == "fabrikam.com"


def test_an_imap_source_needs_no_tenant_and_has_its_own_table(tmp_path: Path) -> None:
    """kind = "imap" takes its settings from [source.imap] (defaults filled in, the port
    following the security mode); the target stays a Microsoft 365 tenant by default."""
    _write(tmp_path, IMAP_SOURCE)
    project = load_project(tmp_path, env={})
    assert (project.source.kind, project.target.kind) == ("imap", "m365")
    imap = project.source.imap
    assert (imap.host, imap.security, imap.effective_port) == (
        "imap.example.org",
        "implicit-tls",
        993,
    )
    assert project.value("source.imap.connections_per_server") == 10
    assert project.to_dict()["source"]["imap"]["host"] == "imap.example.org"
    _write(tmp_path, _with("source.imap", 'security = "starttls"', IMAP_SOURCE))
    assert load_project(tmp_path, env={}).source.imap.effective_port == 143
    with pytest.raises(ConfigError) as info:
        project.source.endpoint()
    assert info.value.fields["key"] == "source.kind" and "imap" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (IMAP_SOURCE.replace('host = "IMAP.Example.org"\n', ""), "source.imap.host", "missing"),
        (_with("source", f'tenant_id = "{SRC_TID}"', IMAP_SOURCE), "source.tenant_id", "kind"),
        (_with("source.imap", 'host = "imap.example.org"'), "source.imap.host", "kind"),
        (_with("source.imap", 'hots = "x"', IMAP_SOURCE), "source.imap.hots", "'host'"),
        (_with("source.imap", 'security = "none"', IMAP_SOURCE), "source.imap.security", "one of"),
        (_with("target.imap", "port = 993", IMAP_SOURCE), "target.imap.port", "kind"),
        (IMAP_SOURCE.replace("IMAP.Example.org", "imap example"), "source.imap.host", "host name"),
        (_with("source", 'kind = "pop3"'), "source.kind", "one of"),
    ],
)
def test_kind_settings_are_checked(tmp_path: Path, text: str, key: str, words: str) -> None:
    """A kind's table is required where it is the side's kind and refused where it is not,
    and its keys and values are checked like any other, naming file and key."""
    err = _load_error(tmp_path, text)
    assert err.fields["key"] == key, err
    assert words in str(err)
