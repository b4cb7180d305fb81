"""Notices to the users of a batch (`coexist notify`) and the playbook's notify steps.

A notice is rendered per user from a jinja2 template pair, ``NAME.txt.j2`` (first line
``Subject: ...``, then the text part) and ``NAME.html.j2`` (the HTML part; autoescaped, so a
display name with markup in it is text). Without an HTML template (a `custom FILE` given
alone) the HTML part is the text part, escaped, in paragraphs. StrictUndefined: a template
naming a variable no notice provides is an error before anything is sent.

Templates are looked up in `[mail] templates` (the operator's own directory) first, then
in the shipped ``playbooks/templates/``. Every user is rendered before the first send, so a
template that fails for one user sends nobody anything.

Who receives a notice: the user's *current working mailbox* — the source address until the
user is cut over, the target address after (`recipient`). A notice about the cutover
therefore reaches the mailbox the user reads on the day it is sent.

Each send is one journaled step per user and template (`notify.<template>:<user>`): a
re-run sends no duplicate (the step is `ok` with where it went), `--resend` sends again,
plan mode renders and sends through `mailer.Planned` (nothing leaves; the plan lists each
mail). A recipient the relay refuses fails that user's step with the relay's answer; the
others go on, and a re-run sends only what did not go. A crash between the relay's accept
and the journal's record leaves the step `started`: the next run sends that one again
(at least once, never silently none).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape

from coexist import mailer
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import InputError, RemoteError
from coexist.model import Phase, phase_at_least
from coexist.settings import Project

TEMPLATE_NAMES = ("before-migration", "after-cutover", "outlook-profile")
STEP_NAME = "notify.send"
CUSTOM = "custom"


def shipped_dir() -> Path:
    """`playbooks/templates/` of the checkout, or the copy shipped in the package."""
    from coexist.playbook import playbook_dirs

    for d in playbook_dirs():
        if (d / "templates").is_dir():
            return d / "templates"
    raise InputError("the shipped notice templates (playbooks/templates/) are missing")


def template_dirs(project: Project) -> list[Path]:
    """Where templates are looked up: `[mail] templates`, then the shipped ones."""
    own = project.mail.templates
    return [*([own] if own is not None else []), shipped_dir()]


# -- instructions per target kind ---------------------------------------------------------
# The one place with what notices tell users to do in their mail client. Facts with a source
# say it; the rest is marked *unverified* (a notice an operator sends should be read first).
INSTRUCTIONS: dict[str, dict[str, Any]] = {
    "m365": {
        "label": "Microsoft 365",
        "webmail": "https://outlook.office.com",  # Outlook on the web's address
        "steps": [
            "Close Outlook.",
            # Control Panel > Mail > Show Profiles > Add: Microsoft support, "Create an
            # Outlook profile"; Autodiscover finds an Exchange Online mailbox from the address.
            "Open Control Panel > Mail (Microsoft Outlook) > Show Profiles > Add, name the "
            "new profile, and enter {new_address}: Outlook finds the mailbox by itself.",
            "Under 'When starting Microsoft Outlook, use this profile', choose the new "
            "profile, then start Outlook.",
            "On a phone: remove the old account from the mail app and add {new_address} "
            "as a Microsoft 365 / Exchange account.",
        ],
        "unverified": [],
    },
    "exchange": {
        "label": "Exchange",
        "webmail": "https://{ews_host}/owa",
        "steps": [
            "Close Outlook.",
            "Open Control Panel > Mail (Microsoft Outlook) > Show Profiles > Add, name the "
            "new profile, and enter {new_address}: Outlook finds the mailbox through "
            "Autodiscover.",
            "Choose the new profile under 'When starting Microsoft Outlook, use this "
            "profile', then start Outlook.",
        ],
        # Outlook on the web at /owa of the EWS host: the usual layout, not every server's.
        "unverified": ["webmail"],
    },
    "workmail": {
        "label": "Amazon WorkMail",
        "webmail": "https://{organization}.awsapps.com/mail",
        "steps": [
            "Close Outlook.",
            "Add {new_address} to Outlook as an Exchange account (Control Panel > Mail > "
            "Show Profiles > Add); Amazon WorkMail answers Outlook's Autodiscover.",
            "Other mail apps: IMAP over TLS on port 993 and SMTP over TLS on port 465 "
            "(STARTTLS is not offered), user name {new_address}.",
        ],
        # Ports: AWS WorkMail user guide, "Setting up IMAP for Amazon WorkMail". The web
        # app's address takes the organisation's alias, which coexist does not know.
        "unverified": ["webmail", "steps[1]"],
    },
    "imap": {
        "label": "IMAP",
        "webmail": "",
        "steps": [
            "In Outlook: File > Add Account, enter {new_address}, choose Advanced options > "
            "Let me set up my account manually > IMAP.",
            "Incoming mail: {imap_host}, port {imap_port}, {imap_security}; user name "
            "{new_address}.",
            "Outgoing mail (SMTP): the server your mail provider names for {new_address}.",
        ],
        # The SMTP server is the provider's; coexist only knows the IMAP side.
        "unverified": ["steps[0]"],
    },
}


def instructions(project: Project, user: Mapping[str, Any]) -> dict[str, Any]:
    """The target kind's steps for one user, with what the project knows filled in."""
    kind = project.target.kind
    spec = INSTRUCTIONS.get(kind, INSTRUCTIONS["m365"])
    facts: dict[str, str] = {"new_address": str(user.get("new_address") or user["address"])}
    imap = getattr(project.target, "imap", None)
    if imap is not None:
        facts |= {
            "imap_host": str(imap.host or "your provider's IMAP server"),
            "imap_port": str(imap.effective_port),
            "imap_security": "TLS" if imap.security == "tls" else str(imap.security).upper(),
        }
    ews = getattr(project.target, "ews", None)
    if ews is not None and ews.url:
        facts["ews_host"] = re.sub(r"^https?://([^/]+).*$", r"\1", ews.url)
    # The WorkMail web app's address takes the organisation's alias, which coexist does not
    # know (its settings hold the organisation id): a placeholder the operator replaces.
    facts["organization"] = "your-organization"
    facts.setdefault("ews_host", "your mail server")
    return {
        "kind": kind,
        "label": spec["label"],
        "webmail": str(spec["webmail"]).format(**facts),
        "steps": [s.format(**facts) for s in spec["steps"]],
        "unverified": list(spec["unverified"]),
    }


# -- templates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A notice template: its key in the journal, the text template, the HTML one if any."""

    key: str  # before-migration | after-cutover | outlook-profile | custom-<file stem>
    env: jinja2.Environment = field(repr=False)
    text: str  # template name in env
    html: str | None


def _environment(dirs: Sequence[Path]) -> jinja2.Environment:
    return SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined,
        # HTML parts are escaped (user data is text); the text part is not HTML at all.
        autoescape=jinja2.select_autoescape(
            enabled_extensions=("html.j2", "html"), default_for_string=False, default=False
        ),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def load_template(project: Project, name: str, custom: Path | None = None) -> Template:
    """The named template (or `custom`, a text template file), checked before any send."""
    dirs = template_dirs(project)
    if name == CUSTOM:
        if custom is None or not custom.is_file():
            raise InputError(
                f"--template custom needs a template file: {custom or '(none given)'}",
                next_step="coexist notify --batch B --template custom FILE.txt.j2",
            )
        base = custom.name.removesuffix(".j2").removesuffix(".txt")
        sibling = custom.parent / f"{base}.html.j2"
        env = _environment([custom.parent.resolve(), *dirs])
        return Template(
            f"custom-{base}", env, custom.name, sibling.name if sibling.is_file() else None
        )
    if name not in TEMPLATE_NAMES:
        raise InputError(
            f"--template {name!r}: expected one of {', '.join((*TEMPLATE_NAMES, CUSTOM))}",
            next_step="coexist notify --batch B --template before-migration",
        )
    env = _environment(dirs)
    try:
        env.get_template(f"{name}.txt.j2")
    except jinja2.TemplateNotFound:
        raise InputError(
            f"no template {name}.txt.j2 in {', '.join(str(d) for d in dirs)}"
        ) from None
    try:
        env.get_template(f"{name}.html.j2")
        html: str | None = f"{name}.html.j2"
    except jinja2.TemplateNotFound:
        html = None
    return Template(name, env, f"{name}.txt.j2", html)


@dataclass(frozen=True)
class Notice:
    """One rendered notice."""

    user: str  # journal key
    to: str
    subject: str
    text: str
    html: str

    def message(self, sender: str) -> EmailMessage:
        msg = mailer.new_message(sender, [self.to], self.subject, self.text)
        msg.add_alternative(self.html, subtype="html")
        return msg

    def to_dict(self) -> dict[str, Any]:
        return {"to": self.to, "subject": self.subject, "text": self.text, "html": self.html}


def _text_to_html(text: str) -> str:
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    body = "\n".join(
        f"<p>{'<br>'.join(str(escape(line)) for line in p.splitlines())}</p>" for p in paragraphs
    )
    return (
        f'<!DOCTYPE html>\n<html><body style="font-family: sans-serif">\n{body}\n</body></html>\n'
    )


def render(template: Template, context: Mapping[str, Any], where: str) -> tuple[str, str, str]:
    """(subject, text, html) of one notice; an InputError naming the template and user
    when a variable is missing or the template has no Subject line."""
    try:
        raw = template.env.get_template(template.text).render(**context)
        html = (
            template.env.get_template(template.html).render(**context)
            if template.html is not None
            else None
        )
    except jinja2.TemplateError as exc:
        raise InputError(
            f"notice template {template.text} for {where}: {exc}",
            next_step="fix the template (every variable it names: README, 'Notices')",
        ) from None
    first, _, text = raw.lstrip("\n").partition("\n")
    if not first.lower().startswith("subject:"):
        raise InputError(
            f"notice template {template.text}: its first line must be 'Subject: ...'",
            next_step=f"start {template.text} with a Subject: line",
        )
    # One line: a display name with a line break must not make a header of its own.
    subject = " ".join(first.partition(":")[2].split())
    text = text.lstrip("\n")
    return subject, text, html if html is not None else _text_to_html(text)


# -- users --------------------------------------------------------------------------------


def recipient(item: Mapping[str, Any]) -> str:
    """The user's current working mailbox: the target address once cut over (and not
    rolled back), the source address before."""
    target = str(item.get("target_address") or "")
    if target and item.get("phase") == Phase.CUTOVER.value:
        return target
    return str(item.get("source_address") or "")


def _date(value: Any) -> str | None:
    if not value:
        return None
    text = str(value)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return text
    return (
        when.strftime("%A %d %B %Y")
        if len(text) <= 10
        else when.strftime("%A %d %B %Y %H:%M %Z").strip()
    )


def user_vars(
    project: Project, item: Mapping[str, Any], cutover_date: str | None
) -> dict[str, Any]:
    """What a notice template sees (README, 'Notices')."""
    user = {
        # One line: a name with a line break would end the template's Subject line early.
        "name": " ".join(str(item.get("name") or item.get("source_address") or "").split()),
        "old_address": str(item.get("source_address") or ""),
        "new_address": str(item.get("target_address") or item.get("source_address") or ""),
        "address": recipient(item),
        "phase": str(item.get("phase") or ""),
        "cut_over": phase_at_least(item.get("phase"), Phase.CUTOVER),
    }
    return {
        "user": user,
        "project": {"name": project.project.name},
        "batch": str(item.get("batch") or ""),
        "cutover_date": _date(cutover_date),
        "target": instructions(project, user),
        "source_kind": project.source.kind,
    }


def cutover_date_of(journal: Any, item: Mapping[str, Any]) -> str | None:
    """When the user's last cutover pass finished (the journal's record), if any."""
    done = [
        p
        for p in journal.passes(str(item["key"]))
        if p["kind"] == "cutover" and p["status"] == "ok" and p["finished_at"]
    ]
    return str(done[-1]["finished_at"])[:10] if done else None


# -- sending ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoticeStep(Step):
    """One notice to one user, sent once (`resend`: again)."""

    name = STEP_NAME

    template: str
    to: str
    mail_subject: str
    resend: bool = False
    # Not part of the intent the journal keeps: the message and the outbox it leaves by.
    _message: EmailMessage | None = field(default=None, compare=False, repr=False)
    _outbox: Any = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return notice_key(self.template, self.subject)

    def intent(self) -> dict[str, Any]:
        # Not `asdict`: it would deep-copy the message and the outbox (and its session).
        return {
            "subject": self.subject,
            "template": self.template,
            "to": self.to,
            "mail_subject": self.mail_subject,
            "resend": self.resend,
        }


def notice_key(template: str, subject: str) -> str:
    return f"{STEP_NAME}.{template}:{subject}"


@registry.register(NoticeStep)
class NoticeExecutor:
    async def observe(self, ctx: Any, step: NoticeStep) -> dict[str, Any] | None:
        prev = ctx.journal.get_step(step.key)
        if step.resend or prev is None or prev.get("status") != "ok":
            return None
        after = prev.get("after") or {}
        return after if after.get("to") else None

    async def apply(
        self, ctx: Any, step: NoticeStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if observed is not None:
            return StepResult(
                False,
                None,
                None,
                f"already sent to {', '.join(observed['to'])} ({observed.get('subject')!r}); "
                "--resend sends it again",
            )
        assert step._message is not None and step._outbox is not None
        sent: mailer.Sent = await step._outbox.send(step._message)
        if sent.refused or not sent.to:
            raise RemoteError(
                f"{step.to}: the mail server refused the notice "
                f"({', '.join(sent.refused) or 'no recipient accepted'}) via {sent.via}",
                service="mail",
                next_step="check the address in the journal (coexist status), then run "
                "coexist notify again: only notices not sent are sent",
            )
        return StepResult(True, None, sent.to_dict(), f"sent to {step.to} via {sent.via}")


async def send_notices(
    sess: Any, notices: Sequence[tuple[Notice, str]], *, resend: bool = False
) -> list[dict[str, Any]]:
    """Send each (notice, template key) as its own journaled step; one row per user."""
    outbox = mailer.outbox_in(sess.project, sess.ctx, sess.recorder)
    rows = []
    for notice, key in notices:
        step = NoticeStep(
            subject=notice.user,
            template=key,
            to=notice.to,
            mail_subject=notice.subject,
            resend=resend,
            _message=notice.message(outbox.sender),
            _outbox=outbox,
        )
        outcome = await sess.runner.run_step(step, notice.to)
        rows.append(
            {
                "user": notice.to,
                "template": key,
                "subject": notice.subject,
                "status": outcome.status,
                "sent": outcome.status in ("ok", "planned") and outcome.changed,
                "detail": outcome.error or outcome.detail,
            }
        )
    return rows


def notify(
    directory: Path | None = None,
    *,
    batch: str,
    template: str,
    custom: Path | None = None,
    date: str | None = None,
    plan: bool = False,
    resend: bool = False,
) -> dict[str, Any]:
    """`coexist notify`: render `template` for each user of `batch`, then send each notice
    once (plan: render and show, send nothing)."""
    from coexist.commands import _in_session, pick_users

    if date is not None:
        try:
            dt.datetime.fromisoformat(date)
        except ValueError:
            raise InputError(
                f"--date {date!r} is not an ISO date", next_step="--date 2026-12-12"
            ) from None

    async def body(sess: Any) -> dict[str, Any]:
        tpl = load_template(sess.project, template, custom)
        items = pick_users(sess.journal, sess.project.directory, batch=batch)
        notices = []
        for item in items:
            to = recipient(item)
            when = date or cutover_date_of(sess.journal, item)
            subject, text, html = render(tpl, user_vars(sess.project, item, when), to)
            notices.append((Notice(str(item["key"]), to, subject, text, html), tpl.key))
        rows = await send_notices(sess, notices, resend=resend)
        shown = {n.to: n for n, _k in notices}
        return {
            "plan": plan,
            "batch": batch,
            "template": tpl.key,
            "notices": [
                {
                    **r,
                    **(
                        {"text": shown[r["user"]].text, "html": shown[r["user"]].html}
                        if plan
                        else {}
                    ),
                }
                for r in rows
            ],
            "sent": sum(1 for r in rows if r["sent"] and not plan),
            "already": sum(1 for r in rows if r["status"] == "ok" and not r["sent"]),
            "failed": [r for r in rows if r["status"] == "failed"],
        }

    return _in_session(
        directory,
        "notify",
        {"batch": batch, "template": template, "date": date, "resend": resend},
        plan=plan,
        body=body,
    )


def send_playbook_notices(
    directory: Path, key: str, rendered: Sequence[Mapping[str, str]]
) -> dict[str, Any]:
    """A playbook's notify step, sent: each rendered notice ({to, subject, body}; `to` a
    user's source address or "operator") as its own journaled step `notify.<key>:<user>`,
    so a step run again sends only what did not go. Users get it at their current working
    mailbox (`recipient`), operators at `[mail] operators`.

    Without a usable mail transport (no relay in the environment, no Graph sender) nothing
    is sent and the result says why (`not_sent`): a playbook rehearsed without mail set up
    still runs; `coexist notify` refuses instead."""
    from coexist.commands import _in_session

    async def body(sess: Any) -> dict[str, Any]:
        try:
            mailer.outbox_for(sess.project, sess.ctx)
        except InputError as exc:
            sess.journal.event(
                sess.runner.run_id, "warning", f"notices of {key} not sent: {exc.message}"
            )
            return {"sent": 0, "already": 0, "failed": [], "not_sent": exc.message, "notices": []}
        by_address = {
            str(i.get("source_address") or "").lower(): i for i in sess.journal.items(kind="user")
        }
        notices = []
        for n in rendered:
            html = _text_to_html(n["body"])
            if n["to"] == "operator":
                for op in sess.project.mail.operators:
                    notices.append(
                        (Notice(f"operator:{op}", op, n["subject"], n["body"], html), key)
                    )
                continue
            item = by_address.get(str(n["to"]).lower())
            if item is None:
                raise InputError(f"notice to {n['to']}: no such user in the journal")
            subject = " ".join(str(n["subject"]).split())
            notices.append(
                (Notice(str(item["key"]), recipient(item), subject, n["body"], html), key)
            )
        rows = await send_notices(sess, notices)
        return {
            "sent": sum(1 for r in rows if r["sent"]),
            "already": sum(1 for r in rows if r["status"] == "ok" and not r["sent"]),
            "failed": [r for r in rows if r["status"] == "failed"],
            "not_sent": None,
            "notices": rows,
        }

    return _in_session(directory, "notify", {"playbook_step": key}, body=body)
