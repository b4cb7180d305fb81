"""Notice templates: every shipped one renders for each target kind with both parts, user
text is escaped in HTML and kept to one line in the Subject, a template naming an unknown
variable or lacking its Subject line is refused, an operator's directory wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from coexist import commands, notices
from coexist.errors import InputError
from coexist.settings import load_project

SOURCE = {
    "source.sandbox_connection": "/nonexistent/connection.json",
    "domains.destination_domain": "fabrikam.example",
}
HOSTILE = "<img src=x onerror=alert(1)> Ann\nBcc: evil@example.com"


def project(tmp_path: Path, **overrides: object) -> Path:
    commands.init(tmp_path / "p", overrides={**SOURCE, **overrides})
    return tmp_path / "p"


def item(**extra: object) -> dict[str, object]:
    return {
        "key": "u1",
        "name": HOSTILE,
        "source_address": "ann@contoso.example",
        "target_address": "ann@fabrikam.example",
        "phase": "prestaged",
        "batch": "wave1",
        **extra,
    }


KINDS = {
    "m365": {"target.sandbox_connection": "/nonexistent/connection.json"},
    "imap": {"target.kind": "imap", "target.imap.host": "imap.fabrikam.example"},
    "exchange": {
        "target.kind": "exchange",
        "target.ews.admin": "admin@fabrikam.example",
        "target.ews.url": "https://mail.fabrikam.example/EWS/Exchange.asmx",
    },
    "workmail": {
        "target.kind": "workmail",
        "target.ews.region": "us-east-1",
        "target.ews.admin": "admin@fabrikam.example",
    },
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", notices.TEMPLATE_NAMES)
def test_every_template_renders_for_every_target_kind(tmp_path: Path, kind: str, name: str) -> None:
    """Subject (one line), a text part with the name as written, an HTML part where the
    name's markup is text, and the kind's instructions in the profile notices."""
    proj = load_project(project(tmp_path, **KINDS[kind]))
    tpl = notices.load_template(proj, name)
    subject, text, html = notices.render(tpl, notices.user_vars(proj, item(), "2026-12-12"), "ann")
    assert subject and "\n" not in subject
    assert "ann@fabrikam.example" in text and "<img" not in html and "&lt;img" in html
    if name != "before-migration":
        steps = notices.instructions(proj, {"address": "ann@contoso.example", "new_address": "x"})
        assert steps["steps"] and all(s.split(",")[0][:20] in text for s in steps["steps"][:1])
    if kind == "imap":
        assert name == "before-migration" or "imap.fabrikam.example" in text


def test_recipient_is_the_working_mailbox() -> None:
    """Before cutover the source address, after it the target address; rolled back: source."""
    assert notices.recipient(item()) == "ann@contoso.example"
    assert notices.recipient(item(phase="cutover")) == "ann@fabrikam.example"
    assert notices.recipient(item(phase="rolled-back")) == "ann@contoso.example"
    assert notices.recipient(item(phase="cutover", target_address=None)) == "ann@contoso.example"


def test_custom_templates_are_checked_and_an_operators_directory_wins(tmp_path: Path) -> None:
    """A custom file with an unknown variable, or without its Subject line, is refused
    before anything is sent; `[mail] templates` overrides a shipped template by name."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "before-migration.txt.j2").write_text("Subject: Ours {{ user.name }}\n\nours\n")
    proj = load_project(project(tmp_path, **KINDS["m365"], **{"mail.templates": str(own)}))
    subject, text, html = notices.render(
        notices.load_template(proj, "before-migration"), notices.user_vars(proj, item(), None), "a"
    )
    assert subject.startswith("Ours ") and text == "ours\n"
    assert "Subject" not in html  # the shipped HTML part still renders beside it
    bad = tmp_path / "bad.txt.j2"
    bad.write_text("Subject: x\n\n{{ user.shoe_size }}\n")
    with pytest.raises(InputError, match="shoe_size"):
        notices.render(
            notices.load_template(proj, "custom", bad), notices.user_vars(proj, item(), None), "a"
        )
    bad.write_text("Hello\n")
    with pytest.raises(InputError, match="Subject"):
        notices.render(
            notices.load_template(proj, "custom", bad), notices.user_vars(proj, item(), None), "a"
        )
    with pytest.raises(InputError, match="expected one of"):
        notices.load_template(proj, "farewell")


def test_unverified_instructions_are_marked_in_one_place() -> None:
    """Every target kind has steps; what is not sourced is listed under `unverified`."""
    for kind, spec in notices.INSTRUCTIONS.items():
        assert spec["steps"] and isinstance(spec["unverified"], list), kind
