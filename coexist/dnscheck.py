"""`coexist check-dns`: a domain's MX, autodiscover CNAME/SRV and SPF, read with dnspython's
resolver and held against what the project's target needs.

The only module of the product that resolves names (the sandbox's DNS face, which answers
them, is the other dnspython user). `check_domain` is the pure part the playbooks' `check`
steps call:

    findings = await check_domain("contoso.example", expectation, resolver="127.0.0.1:5353")
    ok = all(f.ok for f in findings)

Each finding is one line for an operator: what was found, what was expected, ok or not, and
what to change at the DNS provider. A resolver that does not answer or answers SERVFAIL is a
finding of status "error" naming the resolver, never an exception.

Vendor values are in VENDOR_RECORDS, one place, each with its documentation source; the ones
not confirmed from the vendor's own page are marked *unverified*.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

# How long one question may take against one resolver (all its tries), in seconds.
LIFETIME_S = 5.0
TIMEOUT_S = 2.0  # one try

Status = Literal["ok", "fail", "warn", "error"]
RecordKind = Literal["MX", "autodiscover", "SRV", "SPF"]


# -- vendor values ------------------------------------------------------------------------
@dataclass(frozen=True)
class VendorRecords:
    """What a mail provider asks a domain's DNS to hold (`{domain_key}`, `{region}` filled in
    by `records_for`)."""

    kind: str
    mx: str  # the host, a pattern with '*' where the provider picks (fnmatch)
    mx_exact: str | None  # the exact host the provider hands out for a domain, when known
    autodiscover: str  # autodiscover.<domain> CNAME target
    spf_include: str  # the `include:` its SPF record names
    source: str  # where these values come from
    unverified: tuple[str, ...] = ()  # which of them no vendor page read here confirms


VENDOR_RECORDS: dict[str, VendorRecords] = {
    # Microsoft 365 "Add DNS records to connect your domain" (learn.microsoft.com/microsoft-
    # 365/admin/get-help-with-domains/create-dns-records-at-any-dns-hosting-provider): MX
    # priority 0 to <domain-key>.mail.protection.outlook.com, CNAME autodiscover ->
    # autodiscover.outlook.com, TXT "v=spf1 include:spf.protection.outlook.com -all". The
    # page itself is not in the research corpus; several copies of its table agree (and the
    # Domain Connect template microsoft.com.o365.json names the same three records).
    # *unverified*: the domain key is the domain with dots as dashes for most domains; the
    # admin center shows the exact one, so the expectation is the pattern.
    "m365": VendorRecords(
        kind="m365",
        mx="*.mail.protection.outlook.com",
        mx_exact="{domain_key}.mail.protection.outlook.com",
        autodiscover="autodiscover.outlook.com",
        spf_include="spf.protection.outlook.com",
        source="Microsoft 365 admin: create DNS records at any DNS hosting provider",
        unverified=("mx_exact",),
    ),
    # Amazon WorkMail receives through SES: "the endpoint for the US West (Oregon) Region is
    # inbound-smtp.us-west-2.amazonaws.com" (docs.aws.amazon.com/ses/latest/dg/receiving-
    # email-mx-record.html, read). The autodiscover CNAME target and the SPF include are
    # *unverified*: WorkMail's admin guide (autodiscover.html) says only that adding the
    # domain prompts for "the AutoDiscover DNS record"; FACTS.md names the autodiscover
    # service host autodiscover-service.mail.<region>.awsapps.com, the CNAME value here is
    # the one the project brief gives.
    "workmail": VendorRecords(
        kind="workmail",
        mx="inbound-smtp.{region}.amazonaws.com",
        mx_exact="inbound-smtp.{region}.amazonaws.com",
        autodiscover="autodiscover.mail.{region}.awsapps.com",
        spf_include="amazonses.com",
        source="Amazon SES: publishing an MX record for email receiving; WorkMail admin guide",
        unverified=("autodiscover", "spf_include"),
    ),
}


def domain_key(domain: str) -> str:
    """Microsoft 365's MX label for a domain: dots as dashes (contoso.com -> contoso-com)."""
    return domain.lower().rstrip(".").replace(".", "-")


def records_for(kind: str, domain: str, region: str | None = None) -> VendorRecords | None:
    """The vendor's records for `domain`, placeholders filled; None for kinds with no vendor
    values (hosted Exchange, IMAP: the project's settings say)."""
    v = VENDOR_RECORDS.get(kind)
    if v is None:
        return None
    fill = {"domain_key": domain_key(domain), "region": region or "us-east-1"}
    return VendorRecords(
        kind=v.kind,
        mx=v.mx.format(**fill),
        mx_exact=v.mx_exact.format(**fill) if v.mx_exact else None,
        autodiscover=v.autodiscover.format(**fill),
        spf_include=v.spf_include.format(**fill),
        source=v.source,
        unverified=v.unverified,
    )


# -- what is expected, what is found ------------------------------------------------------
@dataclass(frozen=True)
class Expectation:
    """What a domain's records must say once mail goes to the target.

    `mx`: host patterns (fnmatch, '*' allowed); every MX must match one. `autodiscover`: the
    CNAME target of autodiscover.<domain> (or the target of its _autodiscover._tcp SRV).
    `spf_include`: a domain the SPF record must `include:` (None: SPF not checked). `mx_hint`:
    the exact host to tell the operator to set, when the pattern has a '*'. `source`: where
    the expectation comes from (shown with a failure)."""

    mx: tuple[str, ...]
    autodiscover: str | None = None
    spf_include: str | None = None
    mx_hint: str | None = None
    source: str = ""


def expectation_for_kind(
    kind: str, domain: str, region: str | None = None, source: str | None = None
) -> Expectation | None:
    """The vendor's expectation for a target of `kind` (None: no vendor values)."""
    v = records_for(kind, domain, region)
    if v is None:
        return None
    return Expectation(
        mx=(v.mx,),
        autodiscover=v.autodiscover,
        spf_include=v.spf_include,
        mx_hint=v.mx_exact,
        source=source or v.source,
    )


@dataclass(frozen=True)
class DnsFinding:
    """One record of one domain, checked: a line for the operator."""

    domain: str
    record: RecordKind
    name: str  # the name asked for, e.g. autodiscover.contoso.example
    status: Status
    found: tuple[str, ...]  # the values in presentation format, lower-case hosts
    expected: str
    message: str  # what was found against what was expected
    fix: str | None = None  # what to change at the DNS provider
    resolver: str = "system"

    @property
    def ok(self) -> bool:
        """Holds for the cutover: "ok", or a "warn" that does not stop it."""
        return self.status in ("ok", "warn")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["found"] = list(self.found)
        d["ok"] = self.ok
        return d


# -- the resolver -------------------------------------------------------------------------
def parse_resolver(text: str) -> tuple[str, int]:
    """`IP[:PORT]` (IPv6 as `[::1]:53` or bare) -> (ip, port); ValueError when it is not."""
    t = text.strip()
    host, port = t, 53
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"resolver {text!r}: expected [IPv6]:PORT")
            port = int(rest[1:])
    elif t.count(":") == 1:
        host, _, p = t.partition(":")
        port = int(p)
    ipaddress.ip_address(host)  # a name would need a resolver of its own
    if not 0 < port < 65536:
        raise ValueError(f"resolver {text!r}: port out of range")
    return host, port


def make_resolver(resolver: str | None) -> dns.asyncresolver.Resolver:
    """dnspython's resolver: the system's (/etc/resolv.conf) or the one at `IP[:PORT]`."""
    if resolver:
        host, port = parse_resolver(resolver)
        r = dns.asyncresolver.Resolver(configure=False)
        r.nameservers = [host]
        r.port = port
    else:
        r = dns.asyncresolver.Resolver()
    r.timeout = TIMEOUT_S
    r.lifetime = LIFETIME_S
    return r


@dataclass
class _Answer:
    values: list[str] = field(default_factory=list)
    absent: str | None = None  # "NXDOMAIN" / "no record": the name or type does not exist
    error: str | None = None  # the resolver failed: timeout, SERVFAIL, refused


async def _ask(r: dns.asyncresolver.Resolver, name: str, rdtype: str, who: str) -> _Answer:
    try:
        answer = await r.resolve(name, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return _Answer(absent=f"{name} does not exist (NXDOMAIN)")
    except dns.resolver.LifetimeTimeout:
        return _Answer(
            error=f"no answer from resolver {who} within {LIFETIME_S:g} s ({name} {rdtype})"
        )
    except dns.resolver.NoNameservers as exc:
        # Every server answered SERVFAIL / REFUSED (or broke the protocol): say which.
        why = "; ".join(f"{e[0]} {e[3]}" for e in exc.kwargs.get("errors", [])) or str(exc)
        return _Answer(error=f"resolver {who} failed for {name} {rdtype}: {why}")
    except dns.exception.DNSException as exc:
        return _Answer(error=f"resolver {who}: {name} {rdtype}: {type(exc).__name__}: {exc}")
    if answer.rrset is None:
        return _Answer(absent=f"{name} has no {rdtype} record")
    return _Answer(values=[rd.to_text() for rd in answer.rrset])


def _host(text: str) -> str:
    return text.lower().rstrip(".")


def _matches(host: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(_host(host), _host(p)) for p in patterns)


# -- the checks ---------------------------------------------------------------------------
async def check_domain(
    domain: str, expect: Expectation, resolver: str | None = None
) -> list[DnsFinding]:
    """MX, autodiscover CNAME, `_autodiscover._tcp` SRV and SPF of `domain` against `expect`,
    read through `resolver` (`IP[:PORT]`; None: the system's). Never raises for DNS answers
    or resolver failures: those are findings ("error" names the resolver)."""
    domain = _host(domain)
    r = make_resolver(resolver)
    who = resolver or "system (" + ", ".join(str(n) for n in r.nameservers) + ")"
    ad_name = f"autodiscover.{domain}"
    srv_name = f"_autodiscover._tcp.{domain}"
    mx, cname, srv, txt = await asyncio.gather(
        _ask(r, domain, "MX", who),
        _ask(r, ad_name, "CNAME", who),
        _ask(r, srv_name, "SRV", who),
        _ask(r, domain, "TXT", who),
    )
    base = {"domain": domain, "resolver": resolver or "system"}
    findings = [_mx_finding(domain, mx, expect, base)]
    findings += _autodiscover_findings(ad_name, srv_name, cname, srv, expect, base)
    if expect.spf_include is not None:
        findings.append(_spf_finding(domain, txt, expect.spf_include, base))
    return findings


def _error(
    record: RecordKind, name: str, a: _Answer, expected: str, base: dict[str, Any]
) -> DnsFinding:
    return DnsFinding(
        record=record, name=name, status="error", found=(), expected=expected,
        message=a.error or "", fix="check that the resolver is reachable and answers "
        "(or name another with --resolver / [dns] resolver)", **base,
    )  # fmt: skip


def _mx_finding(domain: str, a: _Answer, expect: Expectation, base: dict[str, Any]) -> DnsFinding:
    want = " or ".join(expect.mx)
    set_to = expect.mx_hint or expect.mx[0]
    if "*" in set_to:  # a pattern: the provider's admin page gives the exact host
        set_to = f"the host your mail provider gives (matching {set_to})"
    if a.error:
        return _error("MX", domain, a, want, base)
    hosts = []
    for v in a.values:  # "10 host." -> (10, host)
        pref, _, host = v.partition(" ")
        hosts.append((int(pref), _host(host)))
    hosts.sort()
    found = tuple(f"{p} {h}" for p, h in hosts)
    fix = f"at the DNS provider of {domain}: set its MX to {set_to} (priority 0) and remove the others"
    if not hosts:
        return DnsFinding(
            record="MX", name=domain, status="fail", found=(), expected=want,
            message=f"MX {domain}: none ({a.absent}); expected {want}", fix=fix, **base,
        )  # fmt: skip
    wrong = [h for _, h in hosts if not _matches(h, expect.mx)]
    if not wrong:
        return DnsFinding(
            record="MX", name=domain, status="ok", found=found, expected=want,
            message=f"MX {domain}: {', '.join(found)} (expected {want})", **base,
        )  # fmt: skip
    still = "still at " if len(wrong) == len(hosts) else "also at "
    return DnsFinding(
        record="MX", name=domain, status="fail", found=found, expected=want,
        message=f"MX {domain}: {still}{', '.join(wrong)}; expected {want}"
        + (f" ({expect.source})" if expect.source else ""),
        fix=fix, **base,
    )  # fmt: skip


def _srv_target(value: str) -> str:
    parts = value.split()  # priority weight port target
    return _host(parts[3]) if len(parts) == 4 else _host(value)


def _autodiscover_findings(
    ad_name: str,
    srv_name: str,
    cname: _Answer,
    srv: _Answer,
    expect: Expectation,
    base: dict[str, Any],
) -> list[DnsFinding]:
    want = expect.autodiscover
    if want is None:
        return []
    want_h = _host(want)
    out: list[DnsFinding] = []
    fix = f"at the DNS provider: set autodiscover CNAME {ad_name} -> {want_h}"
    srv_ok = not srv.error and any(_srv_target(v) == want_h for v in srv.values)
    if cname.error:
        out.append(_error("autodiscover", ad_name, cname, want_h, base))
    else:
        targets = tuple(_host(v) for v in cname.values)
        if targets and targets[0] == want_h:
            status: Status = "ok"
            msg = f"autodiscover {ad_name}: CNAME {targets[0]} (expected {want_h})"
        elif not targets and srv_ok:
            status = "ok"
            msg = f"autodiscover {ad_name}: no CNAME ({cname.absent}); the SRV {srv_name} points at {want_h}"
        elif targets:
            status = "fail"
            msg = f"autodiscover {ad_name}: CNAME still {targets[0]}; expected {want_h}"
        else:
            status = "fail"
            msg = f"autodiscover {ad_name}: no CNAME ({cname.absent}); expected {want_h}"
        out.append(DnsFinding(
            record="autodiscover", name=ad_name, status=status, found=targets, expected=want_h,
            message=msg, fix=None if status == "ok" else fix, **base,
        ))  # fmt: skip
    if srv.error:
        out.append(_error("SRV", srv_name, srv, want_h, base))
        return out
    found = tuple(v.rstrip(".") for v in srv.values)
    if not found:
        status, msg, srv_fix = "ok", f"SRV {srv_name}: none (not needed with the CNAME)", None
    elif srv_ok:
        status, msg, srv_fix = "ok", f"SRV {srv_name}: {', '.join(found)}", None
    else:
        # Outlook asks for the SRV only when the autodiscover URLs fail (WorkMail admin guide,
        # autodiscover phases; Microsoft's autodiscover order), so a stale one is a warning.
        status = "warn"
        msg = f"SRV {srv_name}: {', '.join(found)} points elsewhere than {want_h}"
        srv_fix = f"at the DNS provider: remove {srv_name} SRV or point it at {want_h} port 443"
    out.append(DnsFinding(
        record="SRV", name=srv_name, status=status, found=found, expected=f"none or {want_h}",
        message=msg, fix=srv_fix, **base,
    ))  # fmt: skip
    return out


def _txt_text(value: str) -> str:
    """A TXT record's presentation ("a" "b") as the one string its parts make."""
    parts = []
    for chunk in value.split('" "'):
        parts.append(chunk.strip('"'))
    return "".join(parts)


def _spf_finding(domain: str, a: _Answer, include: str, base: dict[str, Any]) -> DnsFinding:
    want = f"v=spf1 ... include:{include} ..."
    if a.error:
        return _error("SPF", domain, a, want, base)
    spf = [t for t in (_txt_text(v) for v in a.values) if t.lower().startswith("v=spf1")]
    found = tuple(spf)
    fix = f"at the DNS provider: add include:{include} to the SPF TXT record of {domain}"
    if not spf:
        return DnsFinding(
            record="SPF", name=domain, status="fail", found=(), expected=want,
            message=f"SPF {domain}: no v=spf1 TXT record; expected one with include:{include}",
            fix=f"at the DNS provider: add TXT {domain} \"v=spf1 include:{include} -all\"", **base,
        )  # fmt: skip
    if len(spf) > 1:  # RFC 7208 4.5: more than one SPF record is a permanent error
        return DnsFinding(
            record="SPF", name=domain, status="fail", found=found, expected=want,
            message=f"SPF {domain}: {len(spf)} v=spf1 records (receivers reject: RFC 7208 4.5)",
            fix=f"at the DNS provider: merge them into one with include:{include}", **base,
        )  # fmt: skip
    terms = {t.lower() for t in spf[0].split()}
    if f"include:{include.lower()}" in terms or f"+include:{include.lower()}" in terms:
        return DnsFinding(
            record="SPF", name=domain, status="ok", found=found, expected=want,
            message=f"SPF {domain}: {spf[0]} (includes {include})", **base,
        )  # fmt: skip
    return DnsFinding(
        record="SPF", name=domain, status="fail", found=found, expected=want,
        message=f"SPF {domain}: {spf[0]} lacks include:{include}", fix=fix, **base,
    )  # fmt: skip


async def check_domains(
    domains: Sequence[str], expect: dict[str, Expectation], resolver: str | None
) -> list[DnsFinding]:
    """`check_domain` for each domain (with its expectation), concurrently, in order."""
    results = await asyncio.gather(*(check_domain(d, expect[d], resolver) for d in domains))
    return [f for r in results for f in r]


def expectation_for_project(
    project: Any,
    domain: str,
    *,
    expect_mx: str | None = None,
    expect_autodiscover: str | None = None,
    expect_spf_include: str | None = None,
) -> Expectation:
    """What `domain` must hold for the project's target: command-line values first, then
    [dns] settings, then the target kind's vendor values (VENDOR_RECORDS). `project` is a
    settings.Project, or None (then the values must be given)."""
    from coexist.errors import ConfigError, InputError

    dns_s = getattr(project, "dns", None)
    mx = expect_mx or (dns_s.expect_mx if dns_s else None)
    ad = expect_autodiscover or (dns_s.expect_autodiscover if dns_s else None)
    spf = expect_spf_include or (dns_s.expect_spf_include if dns_s else None)
    vendor: Expectation | None = None
    if project is not None:
        target = project.target
        region = None
        if target.kind == "workmail":
            region = (target.workmail.region if target.workmail else None) or (
                target.ews.region if target.ews else None
            )
        vendor = expectation_for_kind(target.kind, domain, region)
    if mx is None and vendor is None:
        kind = project.target.kind if project is not None else None
        if project is None:
            raise InputError(
                "no expectation for the MX: no project here and no --expect-mx",
                next_step="run it in the project directory (--project DIR) or give --expect-mx HOST",
            )
        raise ConfigError(
            f'no vendor MX is known for a target of kind "{kind}": say which host mail goes to',
            file=str(project.file),
            key="dns.expect_mx",
            next_step="set [dns] expect_mx (the hosting provider's MX host) or give --expect-mx",
        )
    given = "--expect-mx" if expect_mx else "[dns] expect_mx"
    return Expectation(
        mx=(mx,) if mx else (vendor.mx if vendor else ()),
        autodiscover=ad or (vendor.autodiscover if vendor else None),
        spf_include=spf or (vendor.spf_include if vendor else None),
        mx_hint=None if mx else (vendor.mx_hint if vendor else None),
        source=(vendor.source if vendor and not mx else given),
    )


def project_domains(project: Any, domains: Sequence[str]) -> list[str]:
    """--domain values, else [dns] domains, else [domains] destination_domain."""
    from coexist.errors import InputError

    found = [_host(d) for d in domains if d.strip()]
    if not found and project is not None:
        found = [_host(d) for d in project.dns.domains] or (
            [_host(project.domains.destination_domain)]
            if project.domains.destination_domain
            else []
        )
    bad = [d for d in found if not is_name(d)]
    if bad:
        raise InputError(f"{bad[0]!r} is not a domain name")
    if not found:
        raise InputError(
            "no domain to check",
            next_step="give --domain D (repeatable) or set [dns] domains in project.toml",
        )
    return found


def run_check(
    project_dir: Any,
    *,
    domains: Sequence[str] = (),
    expect_mx: str | None = None,
    expect_autodiscover: str | None = None,
    resolver: str | None = None,
) -> dict[str, Any]:
    """`coexist check-dns`: every domain's findings; `ok` when none fails or errs. A directory
    without project.toml is fine when --domain and --expect-mx say everything."""
    from pathlib import Path

    from coexist.errors import InputError
    from coexist.settings import PROJECT_FILE, load_project

    directory = Path(project_dir)
    has_project = (directory / PROJECT_FILE).is_file() or directory.is_file()
    project = load_project(directory) if has_project else None
    names = project_domains(project, domains)
    chosen = resolver or (project.dns.resolver if project is not None else None) or None
    if chosen:
        try:
            parse_resolver(chosen)
        except ValueError as exc:
            raise InputError(
                f"resolver {chosen!r} is not IP or IP:PORT ({exc})",
                next_step='e.g. --resolver 127.0.0.1:5353 or [dns] resolver = "192.0.2.53"',
            ) from exc
    expect = {
        d: expectation_for_project(
            project, d, expect_mx=expect_mx, expect_autodiscover=expect_autodiscover
        )
        for d in names
    }
    findings = asyncio.run(check_domains(names, expect, chosen))
    return {
        "resolver": chosen or "system",
        "domains": names,
        "ok": all(f.ok for f in findings),
        "findings": [f.to_dict() for f in findings],
    }


def is_name(text: str) -> bool:
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException:
        return False
    return True


__all__ = [
    "VENDOR_RECORDS",
    "DnsFinding",
    "Expectation",
    "VendorRecords",
    "check_domain",
    "check_domains",
    "expectation_for_kind",
    "make_resolver",
    "parse_resolver",
    "records_for",
]
