"""File attachments over EWS: CreateAttachment, GetAttachment, and the Attachments a GetItem
lists.

A message's attachments are its MIME parts (the mailstore appends one on CreateAttachment). A
calendar item's, contact's, task's or note's are kept in its PIM properties
(`ewsAttachments`: name, content type, base64 content, inline, contact photo); the Graph faces
do not show them. A contact photo (IsContactPhoto) makes an Exchange contact `HasPicture`;
Amazon WorkMail keeps it as a plain attachment (FACTS.md: "contact photos arrive as plain
attachments"), so there IsContactPhoto reads back false and HasPicture stays false.

Attachment ids: base64url of `CXAT` + the item id + "|" + the attachment's index.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from xml.etree import ElementTree as ET

from ..mailstore import Attachment
from . import soap
from .soap import NS, T, t

PROP = "ewsAttachments"
_MARK = b"CXAT"


def attachment_id(item_id: str, index: int) -> str:
    return base64.urlsafe_b64encode(_MARK + f"{item_id}|{index}".encode()).decode()


def parse_attachment_id(value: str) -> tuple[str, int] | None:
    try:
        raw = base64.urlsafe_b64decode(value.encode())
    except (binascii.Error, ValueError):
        return None
    if not raw.startswith(_MARK):
        return None
    item_id, _, index = raw[len(_MARK) :].decode(errors="replace").rpartition("|")
    return (item_id, int(index)) if item_id and index.isdigit() else None


def from_mime(parts: list[Attachment]) -> list[dict[str, Any]]:
    return [
        {"name": a.name, "contentType": a.content_type, "isInline": a.is_inline,
         "contentId": a.content_id, "data": a.data}
        for a in parts
    ]  # fmt: skip


def from_props(props: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for a in props.get(PROP) or []:
        out.append({**a, "data": base64.b64decode(a.get("content") or "")})
    return out


def element(item_id: str, change_key: str, index: int, a: dict[str, Any], *,
            content: bool, photo_kept: bool) -> ET.Element:  # fmt: skip
    """A t:FileAttachment: its id and properties, and its Content when `content`."""
    data: bytes = a["data"]
    parts = [
        # Only the Id: clients send back what they were given, and GetAttachment's
        # AttachmentId (RequestAttachmentIdType) has no RootItemId (Exchange answers
        # ErrorSchemaValidation to one: exchangelib issue 58). CreateAttachment's answer
        # carries the root item (create_attachment).
        t("AttachmentId", {"Id": attachment_id(item_id, index)}),
        t("Name", text=a.get("name") or ""),
        t("ContentType", text=a.get("contentType") or "application/octet-stream"),
        t("ContentId", text=a["contentId"]) if a.get("contentId") else None,
        t("Size", text=len(data)),
        t("IsInline", text="true" if a.get("isInline") else "false"),
        t("IsContactPhoto", text="true" if a.get("isContactPhoto") and photo_kept else "false"),
        t("Content", text=base64.b64encode(data).decode()) if content else None,
    ]  # fmt: skip
    return soap.ordered(t("FileAttachment"), f"{{{T}}}FileAttachmentType",
                        [p for p in parts if p is not None])  # fmt: skip


def listing(
    item_id: str, change_key: str, found: list[dict[str, Any]], photo_kept: bool
) -> ET.Element:
    return t("Attachments", None, [element(item_id, change_key, n, a, content=False, photo_kept=photo_kept)
                                   for n, a in enumerate(found)])  # fmt: skip


def parse_new(node: ET.Element) -> dict[str, Any]:
    """A t:FileAttachment of a CreateAttachment request, as stored in PIM properties."""
    content = soap.text_of(node, "t:Content") or ""
    return {
        "name": soap.text_of(node, "t:Name") or "",
        "contentType": soap.text_of(node, "t:ContentType") or "application/octet-stream",
        "contentId": soap.text_of(node, "t:ContentId"),
        "isInline": soap.is_true(soap.text_of(node, "t:IsInline")),
        "isContactPhoto": soap.is_true(soap.text_of(node, "t:IsContactPhoto")),
        "content": "".join(content.split()),
    }


def file_attachments(node: ET.Element) -> list[ET.Element]:
    holder = node.find("m:Attachments", NS)
    return list(holder) if holder is not None else []
