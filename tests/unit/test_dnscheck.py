"""dnscheck's expectations and resolver parsing: vendor values by target kind, settings and
flags over them, and a hosted Exchange target that must name its MX."""

from __future__ import annotations

from pathlib import Path

import pytest

from coexist import commands, dnscheck
from coexist.errors import ConfigError
from coexist.settings import load_project

SOURCE = {"source.sandbox_connection": "/nonexistent/connection.json"}


def project(tmp_path: Path, **overrides: object) -> Path:
    commands.init(tmp_path / "p", overrides={**SOURCE, **overrides})
    return tmp_path / "p"


def test_parse_resolver_forms() -> None:
    """IP, IP:PORT, [IPv6]:PORT and bare IPv6 parse; a host name or a bad port does not."""
    assert dnscheck.parse_resolver("192.0.2.53") == ("192.0.2.53", 53)
    assert dnscheck.parse_resolver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert dnscheck.parse_resolver("[::1]:5353") == ("::1", 5353)
    assert dnscheck.parse_resolver("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("dns.example", "127.0.0.1:0", "127.0.0.1:x"):
        with pytest.raises(ValueError):
            dnscheck.parse_resolver(bad)


def test_m365_target_expects_microsofts_records(tmp_path: Path) -> None:
    """A Microsoft 365 target: the MX pattern, the exact host as the hint, autodiscover.outlook.com."""
    p = load_project(project(tmp_path, **{
        "domains.destination_domain": "contoso.com",
        "target.sandbox_connection": "/nonexistent/connection.json",
    }))  # fmt: skip
    e = dnscheck.expectation_for_project(p, "contoso.com")
    assert e.mx == ("*.mail.protection.outlook.com",)
    assert e.mx_hint == "contoso-com.mail.protection.outlook.com"
    assert (e.autodiscover, e.spf_include) == (
        "autodiscover.outlook.com",
        "spf.protection.outlook.com",
    )
    assert dnscheck.project_domains(p, []) == ["contoso.com"]  # destination_domain by default


def test_workmail_target_uses_its_region(tmp_path: Path) -> None:
    """A WorkMail target in eu-west-1: SES's inbound endpoint of that region."""
    p = load_project(project(tmp_path, **{
        "target.kind": "workmail", "target.ews.region": "eu-west-1",
        "target.ews.admin": "svc@fabrikam.example", "dns.domains": ["Fabrikam.example"],
    }))  # fmt: skip
    e = dnscheck.expectation_for_project(p, "fabrikam.example")
    assert e.mx == ("inbound-smtp.eu-west-1.amazonaws.com",)
    assert e.autodiscover == "autodiscover.mail.eu-west-1.awsapps.com"
    assert dnscheck.project_domains(p, []) == ["fabrikam.example"]


def test_hosted_exchange_target_must_name_its_mx(tmp_path: Path) -> None:
    """No vendor values for hosted Exchange: a ConfigError naming [dns] expect_mx, until the
    setting (or --expect-mx) says the hoster's host."""
    overrides = {
        "target.kind": "exchange", "target.ews.url": "https://mail.hoster.example/EWS/Exchange.asmx",
        "target.ews.admin": "svc@fabrikam.example", "dns.domains": ["fabrikam.example"],
    }  # fmt: skip
    p = load_project(project(tmp_path, **overrides))
    with pytest.raises(ConfigError, match=r"dns.expect_mx"):
        dnscheck.expectation_for_project(p, "fabrikam.example")
    e = dnscheck.expectation_for_project(p, "fabrikam.example", expect_mx="mail.hoster.example")
    assert e.mx == ("mail.hoster.example",) and e.autodiscover is None
    p2 = load_project(project(tmp_path / "2", **overrides, **{"dns.expect_mx": "mx.hoster.example",
                                                              "dns.expect_autodiscover": "ad.hoster.example"}))  # fmt: skip
    e2 = dnscheck.expectation_for_project(p2, "fabrikam.example")
    assert (e2.mx, e2.autodiscover, e2.source) == (
        ("mx.hoster.example",),
        "ad.hoster.example",
        "[dns] expect_mx",
    )


def test_vendor_values_name_their_source_and_unverified_parts() -> None:
    """Every vendor entry says where its values come from; WorkMail's autodiscover and SPF
    are marked unverified."""
    for v in dnscheck.VENDOR_RECORDS.values():
        assert v.source
    assert set(dnscheck.VENDOR_RECORDS["workmail"].unverified) == {"autodiscover", "spf_include"}
