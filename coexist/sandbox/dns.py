"""The sandbox's DNS face: an authoritative server on loopback (UDP and TCP) for every
domain of the sandbox's tenants, so `coexist check-dns` and the playbooks' checks go
through a real resolver.

Built on dnspython's message API: queries are parsed with `dns.message.from_wire`, answers
made with `dns.message.make_response` and rrsets, UDP answers rendered with
`to_wire(max_size=..., prefer_truncation=True)` (TC set when the answer exceeds 512 bytes or
the query's EDNS payload), TCP framed by `dns.query.receive_tcp` / `send_tcp` (the 2-byte
length prefix, RFC 1035 4.2.2).

Answers as an authoritative server does (RFC 1034 4.3.2, RFC 2308):
- a name in a zone: AA set; records of the type asked, or the CNAME chain followed while it
  stays in the sandbox's zones;
- the name exists without that type: NOERROR, empty answer (NODATA), the zone's SOA in the
  authority section with TTL min(SOA TTL, SOA MINIMUM) (RFC 2308 3, 5);
- the name does not exist: NXDOMAIN with the SOA likewise;
- a name in no zone of the sandbox: REFUSED (it is not a recursive resolver).

The records live in the sandbox's World (`World.dns`, saved with state.json): each tenant
domain gets its provider's MX, autodiscover CNAME and SPF the first time the face sees it
(`ensure_zones`), and `coexist sandbox dns set` changes them (admin channel when running).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from coexist.dnscheck import records_for

from .model import DnsRecord, DnsZone, Tenant, World

log = logging.getLogger(__name__)

# The SOA every sandbox zone has (synthesised, not stored): MNAME, RNAME local part, timers.
NS_HOST = "ns.sandbox.coexist.invalid"
SOA_TIMERS = (3600, 600, 86400, 300)  # refresh, retry, expire, minimum (negative TTL)
SOA_TTL = 3600
# The hosting provider of the sandbox's Exchange organisations (exchange2016/2019): a made-up
# provider; its hosts are what the operator's project names in [dns] expect_mx.
HOSTER_MX = "mail.hosted-exchange.example"
HOSTER_AUTODISCOVER = "autodiscover.hosted-exchange.example"
HOSTER_SPF = "spf.hosted-exchange.example"
# The region of the sandbox's WorkMail organisations (sandbox/workmail.REGION).
WORKMAIL_REGION = "us-east-1"
MAX_CNAME_CHAIN = 8
TCP_IDLE_S = 10.0
UDP_PLAIN_MAX = 512  # RFC 1035 2.3.4: a UDP message without EDNS
TYPES = ("A", "AAAA", "MX", "CNAME", "SRV", "TXT", "NS")


class DnsError(ValueError):
    """A record change that cannot be made as asked."""


# -- the records ------------------------------------------------------------------------------
def _norm(name: str) -> str:
    return name.strip().lower().rstrip(".")


def default_records(tenant: Tenant, domain: str) -> list[DnsRecord]:
    """What the domain's DNS holds before the project: its tenant's provider's MX, autodiscover
    CNAME and SPF (and the _autodiscover._tcp SRV hosters publish)."""
    d = _norm(domain)
    if tenant.kind in ("exchange2016", "exchange2019"):
        return [
            DnsRecord(d, "MX", f"10 {HOSTER_MX}."),
            DnsRecord(f"autodiscover.{d}", "CNAME", f"{HOSTER_AUTODISCOVER}."),
            DnsRecord(f"_autodiscover._tcp.{d}", "SRV", f"0 0 443 {HOSTER_AUTODISCOVER}."),
            DnsRecord(d, "TXT", f'"v=spf1 include:{HOSTER_SPF} -all"'),
        ]
    kind = "workmail" if tenant.kind == "workmail" else "m365"
    v = records_for(kind, d, WORKMAIL_REGION)
    assert v is not None and v.mx_exact is not None
    return [
        DnsRecord(d, "MX", f"{0 if kind == 'm365' else 10} {v.mx_exact}."),
        DnsRecord(f"autodiscover.{d}", "CNAME", f"{v.autodiscover}."),
        DnsRecord(d, "TXT", f'"v=spf1 include:{v.spf_include} -all"'),
    ]


def ensure_zones(world: World) -> list[str]:
    """A zone for every tenant domain that has none yet (its default records); returns the new
    ones. A domain's zone is kept once made: it is the DNS provider's, not the tenant's."""
    made = []
    with world.lock:
        for tenant in world.tenants.values():
            for d in tenant.domains:
                name = _norm(d.name)
                if name not in world.dns:
                    world.dns[name] = DnsZone(name, 1, default_records(tenant, name))
                    made.append(name)
        if made:
            world.dns_version += 1
    return made


def zone_of(world: World, name: str) -> DnsZone | None:
    """The sandbox zone holding `name` (the longest matching zone name)."""
    n = _norm(name)
    best: DnsZone | None = None
    for zname, zone in world.dns.items():
        if (n == zname or n.endswith("." + zname)) and (
            best is None or len(zname) > len(best.name)
        ):
            best = zone
    return best


def _rdata(rtype: str, value: str) -> dns.rdata.Rdata:
    """A value in presentation format; hosts are absolute whether or not they end in '.'. A TXT
    value not in quotes is one text, split into 255-byte strings (RFC 1035 3.3.14)."""
    if rtype == "TXT" and not value.lstrip().startswith('"'):
        raw = value.encode()
        chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
        value = " ".join('"' + c.decode(errors="replace").replace('"', '\\"') + '"' for c in chunks)
    try:
        return dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.from_text(rtype),
            value,
            origin=dns.name.root,
            relativize=False,  # stored absolute ("host."), whatever origin reads it
        )
    except (dns.exception.DNSException, ValueError) as exc:
        raise DnsError(f"{rtype} {value!r} is not a {rtype} value: {exc}") from exc


def set_records(
    world: World, name: str, rtype: str, values: list[str], ttl: int = 3600
) -> dict[str, Any]:
    """Replace the `rtype` records of `name` with `values` (none: remove them). A CNAME stands
    alone at its name (RFC 1034 3.6.2): setting one removes the name's other records, and no
    other type is set where a CNAME is."""
    rtype = rtype.strip().upper()
    if rtype not in TYPES:
        raise DnsError(f"record type {rtype!r}: the sandbox holds {', '.join(TYPES)}")
    n = _norm(name)
    parsed = [_rdata(rtype, v) for v in values]  # all checked before any change
    if rtype == "CNAME" and len(parsed) > 1:
        raise DnsError(f"{n}: a name has at most one CNAME")
    with world.lock:
        zone = zone_of(world, n)
        if zone is None:
            raise DnsError(
                f"{n} is in no zone of this sandbox ({', '.join(sorted(world.dns)) or 'none'})"
            )
        at_name = [r for r in zone.records if r.name == n]
        if parsed and rtype != "CNAME" and any(r.type == "CNAME" for r in at_name):
            raise DnsError(f"{n} has a CNAME: remove it first (coexist sandbox dns set {n} CNAME)")
        before = [r.value for r in at_name if r.type == rtype]
        keep = [
            r
            for r in zone.records
            if not (r.name == n and (r.type == rtype or (rtype == "CNAME" and parsed)))
        ]
        zone.records = keep + [DnsRecord(n, rtype, rd.to_text(), ttl) for rd in parsed]
        zone.serial += 1
        world.dns_version += 1
        after = [r.value for r in zone.records if r.name == n and r.type == rtype]
    return {"zone": zone.name, "name": n, "type": rtype, "before": before, "after": after,
            "serial": zone.serial}  # fmt: skip


def show(world: World, domain: str | None = None) -> list[dict[str, Any]]:
    """The records of one zone (or all), as rows."""
    rows = []
    with world.lock:
        zones = (
            [world.dns[_norm(domain)]]
            if domain and _norm(domain) in world.dns
            else ([] if domain else list(world.dns.values()))
        )
        if domain and not zones:
            raise DnsError(f"no zone {domain} in this sandbox ({', '.join(sorted(world.dns))})")
        for z in sorted(zones, key=lambda z: z.name):
            for r in z.records:
                rows.append({"zone": z.name, "name": r.name, "type": r.type, "ttl": r.ttl,
                             "value": r.value})  # fmt: skip
    return rows


# -- answering --------------------------------------------------------------------------------
def _soa(zone: DnsZone) -> dns.rrset.RRset:
    refresh, retry, expire, minimum = SOA_TIMERS
    text = f"{NS_HOST}. hostmaster.{zone.name}. {zone.serial} {refresh} {retry} {expire} {minimum}"
    return dns.rrset.from_text(zone.name + ".", SOA_TTL, "IN", "SOA", text)


def _negative_soa(zone: DnsZone) -> dns.rrset.RRset:
    """The SOA for a negative answer: TTL min(SOA TTL, MINIMUM) (RFC 2308 3)."""
    soa = _soa(zone)
    soa.ttl = min(SOA_TTL, SOA_TIMERS[3])
    return soa


def _rrset(zone: DnsZone, name: str, rdtype: dns.rdatatype.RdataType) -> dns.rrset.RRset | None:
    if name == zone.name and rdtype == dns.rdatatype.SOA:
        return _soa(zone)
    if name == zone.name and rdtype == dns.rdatatype.NS:
        return dns.rrset.from_text(name + ".", SOA_TTL, "IN", "NS", NS_HOST + ".")
    want = dns.rdatatype.to_text(rdtype)
    records = [r for r in zone.records if r.name == name and r.type == want]
    if not records:
        return None
    return dns.rrset.from_text_list(
        name + ".",
        min(r.ttl for r in records),
        "IN",
        want,
        [r.value for r in records],
        origin=dns.name.root,  # a value saved without its final dot is still absolute
        relativize=False,
    )


def _name_exists(zone: DnsZone, name: str) -> bool:
    """Has records, is the apex, or is an empty non-terminal (RFC 4592 2.2.2)."""
    return name == zone.name or any(
        r.name == name or r.name.endswith("." + name) for r in zone.records
    )


def answer(world: World, query: dns.message.Message) -> dns.message.Message:
    """The authoritative response to one query."""
    response = dns.message.make_response(query)
    if query.opcode() != dns.opcode.QUERY:
        response.set_rcode(dns.rcode.NOTIMP)
        return response
    if len(query.question) != 1:
        response.set_rcode(dns.rcode.FORMERR)
        return response
    q = query.question[0]
    qname, qtype = _norm(q.name.to_text()), q.rdtype
    with world.lock:
        ensure_zones(world)  # a domain added since (New-AcceptedDomain) is served too
        zone = zone_of(world, qname)
        if zone is None or q.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA  # RFC 1035 4.1.1: for the first owner name's zone
        name, seen = qname, set()
        while True:
            if qtype == dns.rdatatype.ANY:
                sets = [
                    s
                    for t in sorted({r.type for r in zone.records if r.name == name})
                    if (s := _rrset(zone, name, dns.rdatatype.from_text(t))) is not None
                ]
                if name == zone.name:
                    sets.insert(0, _soa(zone))
                if sets:
                    response.answer.extend(sets)
                    return response
            else:
                found = _rrset(zone, name, qtype)
                if found is not None:
                    response.answer.append(found)
                    return response
            cname = (
                _rrset(zone, name, dns.rdatatype.CNAME) if qtype != dns.rdatatype.CNAME else None
            )
            if cname is not None:
                response.answer.append(cname)
                target = _norm(cname[0].target.to_text())
                seen.add(name)
                next_zone = zone_of(world, target)
                # Follow the chain while it stays in the sandbox's zones (RFC 1034 4.3.2 step
                # 3.a); out of them, the resolver asks the target's own servers.
                if next_zone is None or target in seen or len(seen) >= MAX_CNAME_CHAIN:
                    return response
                zone, name = next_zone, target
                continue
            if not _name_exists(zone, name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(_negative_soa(zone))
            return response


def udp_wire(response: dns.message.Message, query: dns.message.Message) -> bytes:
    """The response for UDP: at most 512 bytes, or the query's EDNS payload; truncated with TC
    set when larger (RFC 1035 4.2.1, RFC 6891 6.2.5)."""
    limit = max(UDP_PLAIN_MAX, query.payload) if query.edns >= 0 else UDP_PLAIN_MAX
    return response.to_wire(max_size=limit, prefer_truncation=True)


def _formerr(data: bytes) -> dns.message.Message | None:
    """FORMERR for a query that does not parse, when at least its id can be read."""
    if len(data) < 2:
        return None
    msg = dns.message.Message(id=int.from_bytes(data[:2], "big"))
    msg.flags = dns.flags.QR
    msg.set_rcode(dns.rcode.FORMERR)
    return msg


# -- the server -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One query the face answered (tests read which transport carried it)."""

    transport: str  # "udp" | "tcp"
    name: str
    type: str
    rcode: str
    truncated: bool


class DnsFace:
    """UDP and TCP listeners on one port of `host`, answering from `world`."""

    def __init__(self, world: World, host: str = "127.0.0.1") -> None:
        self.world = world
        self.host = host
        self.port = 0
        self.seen: collections.deque[Seen] = collections.deque(maxlen=1000)
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @property
    def address(self) -> str:
        """`IP:PORT`, as `[dns] resolver` and `check-dns --resolver` take it."""
        return f"{self.host}:{self.port}"

    def start(self, port: int = 0) -> DnsFace:
        """Listen on `port` (UDP and TCP alike), or any free one when 0 or taken."""
        ensure_zones(self.world)
        for attempt in range(20):
            try:
                self._bind(port if attempt == 0 else 0)
                break
            except OSError as exc:
                self._close_sockets()
                if exc.errno != errno.EADDRINUSE:
                    raise
        else:
            raise RuntimeError("sandbox DNS face: no port free for both UDP and TCP")
        self._stopping.clear()
        for target, name in (
            (self._serve_udp, "sandbox-dns-udp"),
            (self._serve_tcp, "sandbox-dns-tcp"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _bind(self, port: int) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp = udp
        udp.bind((self.host, port))
        self.port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp = tcp
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((self.host, self.port))
        tcp.listen(16)
        # Both wake every so often to notice stop() (a closed socket does not wake recv).
        udp.settimeout(0.2)
        tcp.settimeout(0.2)

    def _close_sockets(self) -> None:
        for s in (self._udp, self._tcp):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        self._udp = self._tcp = None

    def stop(self) -> None:
        self._stopping.set()
        for t in self._threads:
            t.join(timeout=2)
        self._threads = []
        self._close_sockets()

    def _record(
        self,
        transport: str,
        query: dns.message.Message | None,
        resp: dns.message.Message,
        truncated: bool,
    ) -> None:
        q = query.question[0] if query is not None and query.question else None
        self.seen.append(Seen(
            transport, _norm(q.name.to_text()) if q is not None else "",
            dns.rdatatype.to_text(q.rdtype) if q is not None else "",
            dns.rcode.to_text(resp.rcode()), truncated,
        ))  # fmt: skip

    def _respond(
        self, data: bytes
    ) -> tuple[dns.message.Message | None, dns.message.Message | None]:
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None, _formerr(data)
        return query, self._answer(query)

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        if query.flags & dns.flags.QR:
            return None  # a response sent to us: never answer one (no loops)
        try:
            return answer(self.world, query)
        except Exception:  # never let one query kill the face
            log.exception("sandbox DNS face: answering failed")
            resp = dns.message.make_response(query)
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp

    def _serve_udp(self) -> None:
        sock = self._udp
        assert sock is not None
        while not self._stopping.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            query, resp = self._respond(data)
            if resp is None:
                continue
            try:
                wire = udp_wire(resp, query) if query is not None else resp.to_wire()
            except dns.exception.DNSException:  # never let one answer kill the face
                log.exception("sandbox DNS face: rendering failed")
                continue
            truncated = bool(dns.message.from_wire(wire, question_only=True).flags & dns.flags.TC)
            self._record("udp", query, resp, truncated)
            with contextlib.suppress(OSError):
                sock.sendto(wire, peer)

    def _serve_tcp(self) -> None:
        sock = self._tcp
        assert sock is not None
        while not self._stopping.is_set():
            try:
                conn, _peer = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(
                target=self._serve_connection, args=(conn,), name="sandbox-dns-conn", daemon=True
            ).start()

    def _serve_connection(self, conn: socket.socket) -> None:
        """Queries on one connection until the client closes it or idles (RFC 7766 6.2.3)."""
        conn.setblocking(True)
        with conn:
            while not self._stopping.is_set():
                try:
                    query, _ = dns.query.receive_tcp(conn, time.time() + TCP_IDLE_S)
                except (EOFError, OSError, dns.exception.Timeout):
                    return
                except dns.exception.DNSException:
                    return  # a message that does not parse: framing may be lost, so hang up
                resp = self._answer(query)
                if resp is None:
                    return
                self._record("tcp", query, resp, False)
                try:
                    dns.query.send_tcp(conn, resp)
                except OSError:
                    return


# -- the admin channel ------------------------------------------------------------------------
def routes() -> list[BaseRoute]:
    """`/_sandbox/admin/dns-set` and `/dns-show` (admin.py's token and loopback checks)."""
    from . import admin
    from .web import ctx_of

    async def _set(request: Request, p: dict[str, Any]) -> Any:
        try:
            return set_records(
                ctx_of(request).world, admin._field(p, "name", str), admin._field(p, "type", str),
                admin._names(p, "values"), int(admin._field(p, "ttl", int, optional=True) or 3600),
            )  # fmt: skip
        except DnsError as exc:
            raise admin.SandboxError(str(exc)) from exc

    async def _show(request: Request, p: dict[str, Any]) -> Any:
        try:
            world = ctx_of(request).world
            ensure_zones(world)
            return show(world, admin._field(p, "domain", str, optional=True))
        except DnsError as exc:
            raise admin.SandboxError(str(exc)) from exc

    return [
        Route(f"{admin.PREFIX}/dns-set", admin._endpoint(_set), methods=["POST"]),
        Route(f"{admin.PREFIX}/dns-show", admin._endpoint(_show), methods=["POST"]),
    ]


# -- the commands (`coexist sandbox dns set/show`) ----------------------------------------------
def command_set(
    state_dir: Any, name: str, rtype: str, values: list[str], ttl: int = 3600
) -> dict[str, Any]:
    """Set records in the running sandbox of `state_dir` (admin channel), else in its saved
    state (served when it starts)."""
    from pathlib import Path

    from coexist.errors import InputError

    from . import admin

    state = Path(state_dir)
    try:
        with admin.reach(state) as server:
            if server is not None:
                payload = {"name": name, "type": rtype, "values": values, "ttl": ttl}
                row: dict[str, Any] = server.call("dns-set", payload)
                return {"state": str(state), "through": "server", **row}
            world = World.load(state)
            ensure_zones(world)
            row = set_records(world, name, rtype, values, ttl)
            world.save(state)
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc
    except DnsError as exc:
        raise InputError(str(exc)) from exc
    return {"state": str(state), "through": "state", **row}


def command_show(state_dir: Any, domain: str | None = None) -> dict[str, Any]:
    """The records of the sandbox of `state_dir` (running or not)."""
    from pathlib import Path

    from coexist.errors import InputError

    from . import admin

    state = Path(state_dir)
    try:
        with admin.reach(state) as server:
            if server is not None:
                rows = server.call("dns-show", {"domain": domain})
                through = "server"
            else:
                world = World.load(state)
                ensure_zones(world)
                rows, through = show(world, domain), "state"
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc
    except DnsError as exc:
        raise InputError(str(exc)) from exc
    return {"state": str(state), "through": through, "records": rows}


@contextlib.contextmanager
def serving(world: World, host: str = "127.0.0.1", port: int = 0) -> Iterator[DnsFace]:
    """A face for the length of a `with` (tests without the HTTPS sandbox)."""
    face = DnsFace(world, host).start(port)
    try:
        yield face
    finally:
        face.stop()


__all__ = ["DnsError", "DnsFace", "answer", "default_records", "ensure_zones", "routes",
           "serving", "set_records", "show", "udp_wire"]  # fmt: skip
