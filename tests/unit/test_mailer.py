"""The mailer's pure parts: the message every coexist mail starts from, its recipients, the
Graph sendMail body built from it, and the relay's settings read from the environment."""

from __future__ import annotations

import base64

import pytest

from coexist import mailer
from coexist.errors import InputError

RELAY = {"COEXIST_SMTP_HOST": "smtp.example.com", "COEXIST_SMTP_FROM": "ops@example.com"}


def a_message() -> mailer.EmailMessage:
    msg = mailer.new_message(
        "ops@example.com", ["Ann Lee <ann@contoso.com>", "bob@contoso.com"], "Moving", "Hi\n"
    )
    msg["Cc"] = "lead@example.com"
    msg.add_alternative("<p>Hi</p>", subtype="html")
    msg.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="r.csv")
    return msg


def test_recipients_are_every_to_cc_and_bcc_address_in_order() -> None:
    """A mail's recipients are its To, Cc and Bcc addresses, names stripped."""
    assert mailer.recipients(a_message()) == [
        "ann@contoso.com",
        "bob@contoso.com",
        "lead@example.com",
    ]


def test_graph_payload_carries_the_html_part_recipients_and_attachments() -> None:
    """sendMail gets the HTML part (the text part only without one), To/Cc with names, each
    attachment as a base64 fileAttachment, and no copy in the service mailbox's Sent Items."""
    body = mailer.graph_payload(a_message())
    message = body["message"]
    assert body["saveToSentItems"] is False
    assert message["subject"] == "Moving"
    assert message["body"] == {"contentType": "html", "content": "<p>Hi</p>\n"}
    assert message["toRecipients"][0] == {
        "emailAddress": {"address": "ann@contoso.com", "name": "Ann Lee"}
    }
    assert message["ccRecipients"] == [{"emailAddress": {"address": "lead@example.com"}}]
    (att,) = message["attachments"]
    assert att["name"] == "r.csv" and att["contentType"] == "text/csv"
    assert base64.b64decode(att["contentBytes"]) == b"a,b\n1,2\n"
    plain = mailer.graph_payload(mailer.new_message("a@x.com", ["b@x.com"], "S", "text\n"))
    assert plain["message"]["body"] == {"contentType": "text", "content": "text\n"}
    assert "attachments" not in plain["message"]


def test_smtp_settings_take_the_sender_from_mail_settings_when_the_env_has_none() -> None:
    """COEXIST_SMTP_FROM wins; without it [mail] sender is the From; without both, a clear
    error names the variable to set."""
    env = {"COEXIST_SMTP_HOST": "smtp.example.com"}
    assert mailer.smtp_settings(env, "svc@contoso.com")["sender"] == "svc@contoso.com"
    assert mailer.smtp_settings(RELAY, "svc@contoso.com")["sender"] == "ops@example.com"
    with pytest.raises(InputError, match="COEXIST_SMTP_FROM"):
        mailer.smtp_settings(env)
    relay = mailer.SmtpRelay(mailer.smtp_settings(RELAY))
    assert relay.via == "smtp smtp.example.com:587 (starttls)"
    assert "password" not in repr(relay)
