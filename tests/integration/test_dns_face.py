"""The running sandbox's DNS face through dnspython's stub resolver (the path `check-dns`
takes): UDP, TCP, the TCP fallback of a truncated answer, NXDOMAIN, and the checks."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.resolver
import pytest

from coexist import dnscheck
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.dns import DnsFace, set_records

DOMAIN = seed.TARGET_DOMAIN


def face_of(sandbox: Sandbox) -> DnsFace:
    assert sandbox.dns is not None
    return sandbox.dns


def resolver_for(face: DnsFace) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [face.host]
    r.port = face.port
    r.lifetime = 5
    return r


def test_connection_names_the_dns_face(sandbox: Sandbox) -> None:
    """connection.json says where the DNS face listens, as [dns] resolver takes it."""
    face = face_of(sandbox)
    assert sandbox.connection["dns"] == {
        "host": "127.0.0.1",
        "port": face.port,
        "resolver": f"127.0.0.1:{face.port}",
    }


def test_resolver_over_udp_and_tcp(sandbox: Sandbox) -> None:
    """The stub resolver gets the seeded MX over UDP, and again over TCP when asked."""
    face = face_of(sandbox)
    r = resolver_for(face)
    udp = r.resolve(DOMAIN, "MX")
    tcp = r.resolve(DOMAIN, "MX", tcp=True)
    want = ["0 contoso-example.mail.protection.outlook.com."]
    assert [rd.to_text() for rd in udp] == [rd.to_text() for rd in tcp] == want
    seen = [(s.transport, s.type) for s in face.seen if s.name == DOMAIN]
    assert ("udp", "MX") in seen and ("tcp", "MX") in seen


def test_large_txt_falls_back_to_tcp(sandbox: Sandbox) -> None:
    """A TXT answer over 512 bytes comes truncated over UDP; the resolver retries over TCP
    and gets the whole record."""
    face = face_of(sandbox)
    big = "v=spf1 " + " ".join(f"ip4:192.0.2.{i}" for i in range(1, 120)) + " -all"
    assert len(big) > 512
    set_records(sandbox.world, f"big.{DOMAIN}", "TXT", [big])
    answer = resolver_for(face).resolve(f"big.{DOMAIN}", "TXT")
    assert b"".join(answer[0].strings).decode() == big
    seen = [(s.transport, s.truncated) for s in face.seen if s.name == f"big.{DOMAIN}"]
    assert ("udp", True) in seen and ("tcp", False) in seen


def test_nxdomain_through_the_resolver(sandbox: Sandbox) -> None:
    """A name the zone does not hold raises dnspython's NXDOMAIN (AA answer with SOA)."""
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver_for(face_of(sandbox)).resolve(f"nobody.{DOMAIN}", "A")


def test_check_domain_ok_for_the_target_vendor(sandbox: Sandbox) -> None:
    """check_domain on the target's Microsoft 365 domain: MX, autodiscover, SRV, SPF all ok."""
    expect = dnscheck.expectation_for_kind("m365", DOMAIN)
    assert expect is not None
    findings = asyncio.run(dnscheck.check_domain(DOMAIN, expect, face_of(sandbox).address))
    assert [(f.record, f.status) for f in findings] == [
        ("MX", "ok"), ("autodiscover", "ok"), ("SRV", "ok"), ("SPF", "ok"),
    ]  # fmt: skip


def test_check_domain_names_what_is_wrong(sandbox: Sandbox) -> None:
    """Old provider's MX, two SPF records, a stale SRV: each a finding with its fix."""
    world = sandbox.world
    set_records(world, DOMAIN, "MX", ["10 mail.oldhost.example", "20 backup.oldhost.example"])
    set_records(world, DOMAIN, "TXT", ["v=spf1 include:spf.protection.outlook.com -all",
                                       "v=spf1 include:oldhost.example -all"])  # fmt: skip
    set_records(world, f"_autodiscover._tcp.{DOMAIN}", "SRV", ["0 0 443 mail.oldhost.example"])
    expect = dnscheck.expectation_for_kind("m365", DOMAIN)
    assert expect is not None
    by = {f.record: f for f in asyncio.run(
        dnscheck.check_domain(DOMAIN, expect, face_of(sandbox).address))}  # fmt: skip
    assert by["MX"].status == "fail"
    assert "still at mail.oldhost.example, backup.oldhost.example" in by["MX"].message
    assert (
        by["MX"].fix is not None and "contoso-example.mail.protection.outlook.com" in by["MX"].fix
    )
    assert by["SPF"].status == "fail" and "RFC 7208" in by["SPF"].message
    assert by["SRV"].status == "warn" and by["SRV"].ok  # Outlook asks it only as a last resort
    assert by["autodiscover"].status == "ok"


@pytest.fixture
def servfail_server() -> Iterator[str]:
    """A UDP server that answers every query SERVFAIL (a broken upstream resolver)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.set_rcode(dns.rcode.SERVFAIL)
            sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join()
    sock.close()


def test_servfail_is_a_finding_naming_the_resolver(servfail_server: str) -> None:
    """A resolver answering SERVFAIL: every finding is an error that names it."""
    expect = dnscheck.Expectation(mx=("*.mail.protection.outlook.com",))
    findings = asyncio.run(dnscheck.check_domain(DOMAIN, expect, servfail_server))
    assert findings and all(f.status == "error" for f in findings)
    assert all(servfail_server in f.message and "SERVFAIL" in f.message for f in findings)


def test_timeout_is_a_finding_naming_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that never answers: an error saying so, naming it (our lifetime, shortened)."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # bound, never read: queries go unanswered
    where = f"127.0.0.1:{silent.getsockname()[1]}"
    monkeypatch.setattr(dnscheck, "LIFETIME_S", 0.5)
    monkeypatch.setattr(dnscheck, "TIMEOUT_S", 0.25)
    try:
        expect = dnscheck.Expectation(mx=("*.mail.protection.outlook.com",))
        [mx] = asyncio.run(dnscheck.check_domain(DOMAIN, expect, where))
    finally:
        silent.close()
    assert mx.status == "error" and f"no answer from resolver {where}" in mx.message
