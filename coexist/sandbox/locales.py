"""Localized default-folder names, as Exchange gives them to a mailbox in a language.

Exchange names a mailbox's default folders in the mailbox's language (Set-MailboxRegional-
Configuration -Language ... -LocalizeDefaultFolderName). A mover must recognise them by what
the API says they are, never by their English names: a German "Posteingang" is the Inbox.
Names as Outlook/OWA shows them in German and Japanese mailboxes.
"""

from __future__ import annotations

# language -> well-known name -> display name. Keys: the mailstore's Graph well-known mail
# folder names and the PIM store's default folders (contacts, calendar, To Do defaultList).
DEFAULT_FOLDER_NAMES: dict[str, dict[str, str]] = {
    "en": {
        "inbox": "Inbox",
        "sentitems": "Sent Items",
        "drafts": "Drafts",
        "deleteditems": "Deleted Items",
        "junkemail": "Junk Email",
        "archive": "Archive",
        "outbox": "Outbox",
        "contacts": "Contacts",
        "calendar": "Calendar",
        "defaultList": "Tasks",
    },
    "de": {
        "inbox": "Posteingang",
        "sentitems": "Gesendete Elemente",
        "drafts": "Entwürfe",
        "deleteditems": "Gelöschte Elemente",
        "junkemail": "Junk-E-Mail",
        "archive": "Archiv",
        "outbox": "Postausgang",
        "contacts": "Kontakte",
        "calendar": "Kalender",
        "defaultList": "Aufgaben",
    },
    "ja": {
        "inbox": "受信トレイ",
        "sentitems": "送信済みアイテム",
        "drafts": "下書き",
        "deleteditems": "削除済みアイテム",
        "junkemail": "迷惑メール",
        "archive": "アーカイブ",
        "outbox": "送信トレイ",
        "contacts": "連絡先",
        "calendar": "予定表",
        "defaultList": "タスク",
    },
}


def names_for(language: str) -> dict[str, str]:
    """The default-folder names of `language` (a known one: en, de, ja)."""
    try:
        return DEFAULT_FOLDER_NAMES[language.split("-")[0].lower()]
    except KeyError:
        known = ", ".join(sorted(DEFAULT_FOLDER_NAMES))
        raise ValueError(f"no folder names for language {language!r}; known: {known}") from None
