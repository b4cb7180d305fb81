"""What an IMAP target folder keeps of a message's flags and keywords, decided from its
PERMANENTFLAGS (RFC 3501 7.1) as servers answered a SELECT (recorded answers; the real
Dovecot cases, normal and ACL-restricted, are tests/integration/test_imap_kept_flags.py)."""

from __future__ import annotations

from coexist.migrate.stores.imap import folder_drops, kept_flags, state_not_kept

# Dovecot 2.3, a folder the owner may write (this machine's Dovecot).
DOVECOT = frozenset({"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\*"})
# Dovecot 2.3, ACL plugin, an owner without the "w" right (this machine's Dovecot).
DOVECOT_NO_WRITE = frozenset({"\\Deleted", "\\Seen"})
# Exchange / Outlook.com IMAP: "* OK [PERMANENTFLAGS (\Seen \Answered \Flagged \Deleted
# \Draft $MDNSent)] Permanent flags" (protocol logs in MailCore/mailcore2 issue 780, an
# Office 365 account, and jstedfast/MailKit issue 1449, Exchange 2010): no "\*".
EXCHANGE = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$MDNSent"})
# A server that names the keywords it already stores and allows no new one.
LISTED = frozenset({"\\Answered", "\\Seen", "$forwarded", "Work"})

ANSWERED, SEEN = frozenset({"\\Answered"}), frozenset({"\\Seen"})
FORWARDED, WORK = frozenset({"$Forwarded"}), frozenset({"Work"})
NONE: frozenset[str] = frozenset()


def test_a_folder_that_allows_everything_keeps_everything() -> None:
    """Dovecot's usual answer (and no answer at all, RFC 3501 7.1) keeps every flag and
    keyword: nothing lost, nothing said."""
    for permanent in (DOVECOT, None):
        assert state_not_kept(permanent, ANSWERED | SEEN, FORWARDED | WORK) is None
        assert kept_flags(permanent, ANSWERED, FORWARDED | WORK) == (ANSWERED, FORWARDED | WORK)
        assert folder_drops(permanent) is None


def test_without_new_keywords_forwarded_and_tags_are_dropped_but_replied_is_kept() -> None:
    """Exchange's answer: \\Answered kept; $Forwarded and a user keyword are neither listed
    nor creatable (no \\*), so a forwarded or tagged message is not kept whole."""
    assert state_not_kept(EXCHANGE, ANSWERED | SEEN, NONE) is None
    assert state_not_kept(EXCHANGE, NONE, FORWARDED) == "the replied/forwarded state ($Forwarded)"
    assert state_not_kept(EXCHANGE, SEEN, WORK) == "the keywords Work"
    assert kept_flags(EXCHANGE, ANSWERED | SEEN, FORWARDED | WORK) == (ANSWERED | SEEN, NONE)
    assert state_not_kept(EXCHANGE, NONE, frozenset({"$MDNSent"})) is None  # listed
    drops = folder_drops(EXCHANGE)
    assert drops is not None and drops.startswith("$Forwarded, new keywords (PERMANENTFLAGS (")


def test_a_folder_without_the_write_right_drops_replied_and_every_keyword() -> None:
    """Dovecot's ACL answer: only \\Seen and \\Deleted are kept; a replied, flagged or
    tagged message loses that part, a message that is only read loses nothing."""
    assert state_not_kept(DOVECOT_NO_WRITE, SEEN, NONE) is None
    lost = state_not_kept(DOVECOT_NO_WRITE, ANSWERED | SEEN | {"\\Flagged"}, FORWARDED | WORK)
    assert lost == (
        "the replied/forwarded state (\\Answered, $Forwarded) and the flags \\Flagged "
        "and the keywords Work"
    )
    assert kept_flags(DOVECOT_NO_WRITE, ANSWERED | SEEN, WORK) == (SEEN, NONE)
    assert folder_drops(DOVECOT_NO_WRITE) == (
        "\\Answered, \\Draft, \\Flagged, $Forwarded, new keywords "
        "(PERMANENTFLAGS (\\Deleted \\Seen))"
    )


def test_keywords_a_folder_lists_are_kept_in_any_case() -> None:
    """A keyword the folder lists is kept without \\* (RFC 3501 9: case-insensitive);
    one it does not list is not."""
    assert state_not_kept(LISTED, ANSWERED, FORWARDED | WORK) is None
    assert state_not_kept(LISTED, NONE, frozenset({"Home"})) == "the keywords Home"
    assert state_not_kept(LISTED, frozenset({"\\Flagged"}), NONE) == "the flags \\Flagged"
