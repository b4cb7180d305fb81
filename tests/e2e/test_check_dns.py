"""`coexist check-dns` passes and fails as the sandbox's DNS records are switched with
`coexist sandbox dns set` (issue 14 acceptance): a hosted Exchange source whose domain moves
to a Microsoft 365 target."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from coexist import commands
from coexist.cli import main
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.dns import HOSTER_AUTODISCOVER, HOSTER_MX
from coexist.sandbox.model import World

DOMAIN = seed.SOURCE_DOMAIN  # fabrikam.example: the source's domain, moving to the target
M365_MX = "0 fabrikam-example.mail.protection.outlook.com"


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox whose source is a hosted Exchange 2016 organisation (its domain's records at
    the hoster) and whose target is Microsoft 365."""
    with Sandbox(tmp_path / "sb", seed=5, users=4, kinds={"source": "exchange2016"}) as sb:
        yield sb


@pytest.fixture
def project(hosted: Sandbox, tmp_path: Path) -> Path:
    conn = str(hosted.state_dir / "connection.json")
    assert hosted.dns is not None
    commands.init(
        tmp_path / "project",
        overrides={
            "source.sandbox_connection": conn,
            "target.sandbox_connection": conn,
            "domains.destination_domain": seed.TARGET_DOMAIN,
            "dns.resolver": hosted.connection["dns"]["resolver"],
            "dns.domains": [DOMAIN],
        },
    )
    return tmp_path / "project"


def test_check_dns_fails_while_mx_is_at_the_old_provider(project: Path) -> None:
    """Before the switch: exit 1, each record's line says where it still points and the fix."""
    result = run("check-dns", "--project", str(project))
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert f"MX {DOMAIN}: still at {HOSTER_MX}; expected *.mail.protection.outlook.com" in out
    assert f"set its MX to {M365_MX.split()[1]}" in out
    assert f"CNAME still {HOSTER_AUTODISCOVER}; expected autodiscover.outlook.com" in out
    assert "lacks include:spf.protection.outlook.com" in out


def test_check_dns_passes_once_switched_through_the_cli(hosted: Sandbox, project: Path) -> None:
    """`sandbox dns set` on the running sandbox switches MX, autodiscover, SRV and SPF; then
    check-dns exits 0 and its JSON says ok for every record."""
    state = str(hosted.state_dir)
    changes = [
        [DOMAIN, "MX", M365_MX],
        [f"autodiscover.{DOMAIN}", "CNAME", "autodiscover.outlook.com"],
        [f"_autodiscover._tcp.{DOMAIN}", "SRV"],  # no value: removed
        [DOMAIN, "TXT", "v=spf1 include:spf.protection.outlook.com -all"],
    ]
    for change in changes:
        r = run("sandbox", "dns", "set", "--state", state, "--json", *change)
        assert r.exit_code == 0, r.output
        assert json.loads(r.output)["through"] == "server"
    result = run("check-dns", "--project", str(project), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["ok"] and body["domains"] == [DOMAIN]
    assert {f["record"]: f["status"] for f in body["findings"]} == {
        "MX": "ok", "autodiscover": "ok", "SRV": "ok", "SPF": "ok",
    }  # fmt: skip
    shown = run("sandbox", "dns", "show", "--state", state, DOMAIN, "--json")
    values = {(r["name"], r["type"]): r["value"] for r in json.loads(shown.output)["records"]}
    assert values[(DOMAIN, "MX")] == M365_MX + "."


def test_mx_switched_back_fails_again(hosted: Sandbox, project: Path) -> None:
    """Switched to the target, then back to the old provider (a rollback): fails again."""
    state = str(hosted.state_dir)
    assert run("sandbox", "dns", "set", "--state", state, DOMAIN, "MX", M365_MX).exit_code == 0
    r = run("check-dns", "--project", str(project), "--json")
    mx = next(f for f in json.loads(r.output)["findings"] if f["record"] == "MX")
    assert mx["status"] == "ok"
    back = f"10 {HOSTER_MX}"
    assert run("sandbox", "dns", "set", "--state", state, DOMAIN, "MX", back).exit_code == 0
    r = run("check-dns", "--project", str(project), "--json")
    mx = next(f for f in json.loads(r.output)["findings"] if f["record"] == "MX")
    assert r.exit_code == 1 and mx["status"] == "fail" and mx["found"] == [f"10 {HOSTER_MX}"]


def test_dns_set_on_a_stopped_sandbox_is_served_at_the_next_start(tmp_path: Path) -> None:
    """Stopped: the change goes into state.json; served again, the face answers it on the
    port it had (connection.json's resolver stays valid)."""
    state = tmp_path / "sb"
    with Sandbox(state, seed=5, users=4) as sb:
        assert sb.dns is not None
        port = sb.dns.port
    r = run(
        "sandbox", "dns", "set", "--state", str(state), "--json", DOMAIN, "MX", "5 mx.new.example"
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["through"] == "state"
    saved = World.load(state).dns[DOMAIN].records
    assert [r.value for r in saved if r.type == "MX"] == ["5 mx.new.example."]
    with Sandbox(state, seed=5, users=4) as sb:
        assert sb.dns is not None and sb.dns.port == port
        r = run("check-dns", "--domain", DOMAIN, "--expect-mx", "mx.new.example",
                "--resolver", sb.dns.address, "--project", str(tmp_path), "--json")  # fmt: skip
        assert r.exit_code == 0, r.output


def test_dns_set_refuses_bad_input(hosted: Sandbox) -> None:
    """A name outside the zones, a bad value, a type beside a CNAME: refused, nothing changed."""
    state = str(hosted.state_dir)
    for args, words in [
        (("mail.example.org", "MX", "10 x.example"), "in no zone"),
        ((DOMAIN, "MX", "ten x.example"), "is not a MX value"),
        ((f"autodiscover.{DOMAIN}", "TXT", "hello"), "has a CNAME"),
    ]:
        r = run("sandbox", "dns", "set", "--state", state, *args)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), r.output
