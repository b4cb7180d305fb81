"""The sandbox's DNS face answers as an authoritative server must (RFC 1034 4.3.2, RFC 1035,
RFC 2308 negative answers, RFC 6891 EDNS payload), read with dnspython's own parser."""

from __future__ import annotations

from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from coexist.sandbox import seed
from coexist.sandbox.dns import SOA_TIMERS, SOA_TTL, DnsFace, serving, set_records
from coexist.sandbox.model import World
from coexist.sandbox.server import profile_settings

ZONE = seed.TARGET_DOMAIN  # contoso.example, a Microsoft 365 tenant's vanity domain


@pytest.fixture(scope="module")
def world() -> World:
    return seed.generate(3, 4, profile_settings("fast", 3))


@pytest.fixture(scope="module")
def face(world: World) -> Iterator[DnsFace]:
    with serving(world) as f:
        set_records(world, f"www.{ZONE}", "A", ["192.0.2.10"])
        set_records(world, f"web.{ZONE}", "CNAME", [f"www.{ZONE}"])
        set_records(world, f"gone.{ZONE}", "CNAME", [f"nothing.{ZONE}"])
        set_records(world, f"_autodiscover._tcp.{ZONE}", "SRV", [f"0 0 443 autodiscover.{ZONE}"])
        set_records(world, f"big.{ZONE}", "TXT", ["x" * 1500])
        yield f


def ask(
    face: DnsFace, name: str, rdtype: str, *, tcp: bool = False, **kw: object
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    send = dns.query.tcp if tcp else dns.query.udp
    r = send(q, face.host, port=face.port, timeout=5)
    assert r.id == q.id and r.question == q.question  # dnspython checks the pairing too
    return r


def test_positive_answer_is_authoritative(face: DnsFace) -> None:
    """A record in a sandbox zone comes back with AA set, QR set, RD echoed, no RA."""
    r = ask(face, ZONE, "MX")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.flags & dns.flags.QR and r.flags & dns.flags.RD
    assert not r.flags & dns.flags.RA  # not a recursive resolver
    [mx] = r.answer
    assert mx.rdtype == dns.rdatatype.MX
    assert [rd.exchange.to_text() for rd in mx] == ["contoso-example.mail.protection.outlook.com."]


def test_nxdomain_carries_the_soa_with_negative_ttl(face: DnsFace) -> None:
    """A name that does not exist: NXDOMAIN, AA, empty answer, the zone's SOA in authority
    with TTL min(SOA TTL, MINIMUM) (RFC 2308 3 and 5)."""
    r = ask(face, f"nobody.{ZONE}", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.flags & dns.flags.AA
    assert r.answer == []
    [soa] = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == f"{ZONE}."
    assert soa.ttl == min(SOA_TTL, SOA_TIMERS[3]) == soa[0].minimum


def test_nodata_is_noerror_with_soa(face: DnsFace) -> None:
    """A name that exists without the type asked: NOERROR, no answer, SOA (RFC 2308 2.2)."""
    r = ask(face, f"www.{ZONE}", "MX")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert r.answer == [] and [s.rdtype for s in r.authority] == [dns.rdatatype.SOA]


def test_empty_non_terminal_exists(face: DnsFace) -> None:
    """_tcp.<zone> holds no record but a name below it does: NODATA, not NXDOMAIN."""
    r = ask(face, f"_tcp.{ZONE}", "TXT")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []


def test_cname_chain_followed_inside_the_zones(face: DnsFace) -> None:
    """web -> www (CNAME) then www's A, in one answer, in chain order (RFC 1034 4.3.2)."""
    r = ask(face, f"web.{ZONE}", "A")
    assert [s.rdtype for s in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert r.answer[1][0].address == "192.0.2.10"


def test_cname_to_a_missing_name_is_nxdomain(face: DnsFace) -> None:
    """A chain ending at a name that does not exist: the CNAME plus NXDOMAIN and SOA
    (RFC 2308 2.1, RFC 6604: the rcode is about the last name)."""
    r = ask(face, f"gone.{ZONE}", "A")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert [s.rdtype for s in r.answer] == [dns.rdatatype.CNAME]
    assert [s.rdtype for s in r.authority] == [dns.rdatatype.SOA]


def test_cname_leaving_the_zones_stops(face: DnsFace) -> None:
    """autodiscover -> autodiscover.outlook.com: the CNAME alone (the resolver goes on)."""
    r = ask(face, f"autodiscover.{ZONE}", "A")
    assert r.rcode() == dns.rcode.NOERROR
    assert [s.rdtype for s in r.answer] == [dns.rdatatype.CNAME]
    assert r.answer[0][0].target.to_text() == "autodiscover.outlook.com."


def test_outside_the_zones_refused(face: DnsFace) -> None:
    """A name in no sandbox zone is REFUSED, without AA: the face does not recurse."""
    r = ask(face, "example.org", "A")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA


def test_udp_truncates_over_512_bytes(face: DnsFace) -> None:
    """Without EDNS a UDP answer over 512 bytes comes back with TC set, and parses."""
    r = ask(face, f"big.{ZONE}", "TXT")
    assert r.flags & dns.flags.TC and r.answer == []


def test_edns_payload_raises_the_udp_limit(face: DnsFace) -> None:
    """With EDNS payload 4096 the same answer fits over UDP; the response has OPT too."""
    r = ask(face, f"big.{ZONE}", "TXT", use_edns=0, payload=4096)
    assert not r.flags & dns.flags.TC and r.edns == 0
    assert b"".join(r.answer[0][0].strings) == b"x" * 1500


def test_tcp_carries_the_whole_answer(face: DnsFace) -> None:
    """Over TCP (2-byte length prefix) the large TXT arrives whole, and the face saw TCP."""
    r = ask(face, f"big.{ZONE}", "TXT", tcp=True)
    assert not r.flags & dns.flags.TC
    assert b"".join(r.answer[0][0].strings) == b"x" * 1500
    assert any(s.transport == "tcp" and s.name == f"big.{ZONE}" for s in face.seen)


def test_soa_and_ns_at_the_apex(face: DnsFace) -> None:
    """The apex answers SOA and NS as a zone does."""
    assert ask(face, ZONE, "SOA").answer[0].rdtype == dns.rdatatype.SOA
    assert ask(face, ZONE, "NS").answer[0].rdtype == dns.rdatatype.NS
