"""Graph contacts and contact folders (learn.microsoft.com/graph/api/resources/contact,
.../contactfolder, user-list-contacts, user-post-contacts, contact-update, contact-delete,
user-list-contactfolders, contactfolder-list-childfolders).

`/contacts` is the default Contacts folder; `/contactFolders` lists the folders
*under* it (the default folder itself is reachable as `/contactFolders/contacts`
... by its id; *unverified* that the well-known name works there).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..mailstore import looks_like_id
from ..model import User
from ..pim import CONTACTS, PimFolder, PimItem, PimStore
from . import common, mail, odata
from .common import GraphJSON, fail
from .outlook_items import (
    EXTENDED,
    etag,
    expanded,
    filtered,
    invalid_value,
    page,
    pim_of,
    take_extended,
    with_extended,
    writable,
)

# Application permissions (user-list-contacts / user-post-contacts "Permissions").
READ = ("Contacts.Read", "Contacts.ReadWrite")
WRITE = ("Contacts.ReadWrite",)

# Writable contact properties (resources/contact), in Graph's serialization order.
CONTACT_FIELDS = (
    "categories", "birthday", "fileAs", "displayName", "givenName", "initials", "middleName",
    "nickName", "surname", "title", "yomiGivenName", "yomiSurname", "yomiCompanyName",
    "generation", "imAddresses", "jobTitle", "companyName", "department", "officeLocation",
    "profession", "businessHomePage", "assistantName", "manager", "homePhones", "mobilePhone",
    "businessPhones", "spouseName", "personalNotes", "children", "emailAddresses", "homeAddress",
    "businessAddress", "otherAddress",
)  # fmt: skip
_COLLECTIONS = frozenset(
    {"categories", "imAddresses", "homePhones", "businessPhones", "children", "emailAddresses"}
)
_ADDRESSES = frozenset({"homeAddress", "businessAddress", "otherAddress"})
# What a contacts $filter may reference (outlook_items.filtered).
FILTERABLE = frozenset(
    {"id", "createdDateTime", "lastModifiedDateTime", "changeKey", "parentFolderId",
     *CONTACT_FIELDS, EXTENDED}
)  # fmt: skip


def contact_json(item: PimItem) -> dict[str, Any]:
    p = item.props
    out: dict[str, Any] = {
        "@odata.etag": etag(item.change_key),
        "id": item.id,
        "createdDateTime": item.created,
        "lastModifiedDateTime": item.modified,
        "changeKey": item.change_key,
        "parentFolderId": item.folder_id,
    }
    for name in CONTACT_FIELDS:
        if name in _COLLECTIONS:
            out[name] = list(p.get(name) or [])
        elif name in _ADDRESSES:
            out[name] = p.get(name) or {}
        else:
            out[name] = p.get(name)
    return out


def _display_name(props: dict[str, Any]) -> str:
    # Outlook composes a display name from the name parts when none is given (*unverified*
    # exact rule: given name, middle name, surname joined by spaces).
    parts = [props.get(k) for k in ("givenName", "middleName", "surname")]
    return " ".join(str(x) for x in parts if x)


def folder_json(f: PimFolder, parent_id: str | None) -> dict[str, Any]:
    """resources/contactfolder."""
    return {"id": f.id, "displayName": f.display_name, "parentFolderId": parent_id}


def _validate(request: Request, props: dict[str, Any]) -> None:
    for name in _COLLECTIONS:
        if name in props and props[name] is not None and not isinstance(props[name], list):
            raise invalid_value(request, name)
    emails = props.get("emailAddresses") or []
    if any(not isinstance(e, dict) for e in emails):
        raise invalid_value(request, "emailAddresses")


def _folder(request: Request, pim: PimStore, key: str, user: User) -> PimFolder:
    folder_key = request.path_params.get("folder_id")
    if folder_key is None:
        return pim.default_folder(key, user.id, CONTACTS)
    found = pim.folder(key, user.id, folder_key, CONTACTS)
    if found is None:
        raise (
            mail.item_not_found(request)
            if looks_like_id(folder_key)
            else mail.malformed_id(request)
        )
    return found


def _contact(request: Request, pim: PimStore, key: str, user: User) -> PimItem:
    contact_id = request.path_params["contact_id"]
    if not looks_like_id(contact_id):
        raise mail.malformed_id(request)
    item = pim.item(key, user.id, contact_id)
    if item is None or item.kind != "contact":
        raise mail.item_not_found(request)
    if "folder_id" in request.path_params and item.folder_id != _folder(request, pim, key, user).id:
        raise mail.item_not_found(request)
    return item


def _entity(request: Request, obj: dict[str, Any], status: int = 200) -> Response:
    body = {
        "@odata.context": common.context_url(
            request, f"users('{request.path_params['user_id']}')/contacts/$entity"
        )
    }
    body.update(obj)
    return GraphJSON(body, status_code=status)


async def list_contacts(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        pim = pim_of(request)
        folder = _folder(request, pim, key, user)
        rows = [
            (expanded(request, contact_json(i), i.props), _extended_member(i))
            for i in pim.items(key, user.id, "contact", folder.id)
        ]
        # Graph documents string-valued extended-property filters for messages and events
        # only (singlevaluelegacyextendedproperty-get): outlook_items.UNVERIFIED_FILTERS.
        values = filtered(request, rows, FILTERABLE, "contact", unverified=(EXTENDED,))
        return page(request, f"users('{request.path_params['user_id']}')/contacts", values)


def _extended_member(item: PimItem) -> dict[str, Any]:
    return {EXTENDED: odata.extended_values(item.props.get(EXTENDED) or {})}


async def create_contact(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        extended = take_extended(request, payload)
        props = writable(request, payload, frozenset(CONTACT_FIELDS), "contact")
        _validate(request, props)
        if not props.get("displayName"):
            props["displayName"] = _display_name(props)
        pim = pim_of(request)
        folder = _folder(request, pim, key, user)
        item = pim.create_item(key, user.id, folder.id, "contact", with_extended(props, extended))
        return _entity(request, contact_json(item), 201)


async def get_contact(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        item = _contact(request, pim_of(request), key, user)
        return _entity(request, expanded(request, contact_json(item), item.props))


async def update_contact(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        extended = take_extended(request, payload)
        patch = writable(request, payload, frozenset(CONTACT_FIELDS), "contact")
        _validate(request, patch)
        pim = pim_of(request)
        item = _contact(request, pim, key, user)
        props = with_extended({**item.props, **patch}, extended)
        return _entity(request, contact_json(pim.update_item(item.id, props)))


async def delete_contact(request: Request) -> Response:
    with mail.outlook(request, WRITE) as (_p, key, user):
        pim = pim_of(request)
        pim.delete_item(_contact(request, pim, key, user).id)
        return Response(status_code=204)


# -- contact folders ----------------------------------------------------------------------------------


async def list_folders(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        pim = pim_of(request)
        parent = _folder(request, pim, key, user)
        children = pim.folders(key, user.id, CONTACTS, parent=parent.id)
        values = [folder_json(f, parent.id) for f in children]
        return page(request, f"users('{request.path_params['user_id']}')/contactFolders", values)


async def create_folder(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        props = writable(
            request, payload, frozenset({"displayName", "parentFolderId"}), "contactFolder"
        )
        name = props.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise invalid_value(request, "displayName")
        pim = pim_of(request)
        parent = _folder(request, pim, key, user)
        if any(
            f.display_name.lower() == name.lower()
            for f in pim.folders(key, user.id, CONTACTS, parent=parent.id)
        ):
            raise mail.folder_exists(request)
        created = pim.create_folder(key, user.id, CONTACTS, name, parent_id=parent.id)
        body = {
            "@odata.context": common.context_url(
                request, f"users('{request.path_params['user_id']}')/contactFolders/$entity"
            )
        }
        body.update(folder_json(created, parent.id))
        return GraphJSON(body, status_code=201)


async def get_folder(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        found = _folder(request, pim_of(request), key, user)
        body = {
            "@odata.context": common.context_url(
                request, f"users('{request.path_params['user_id']}')/contactFolders/$entity"
            )
        }
        body.update(folder_json(found, found.parent_id))
        return GraphJSON(body)


async def delete_folder(request: Request) -> Response:
    with mail.outlook(request, WRITE) as (_p, key, user):
        pim = pim_of(request)
        found = _folder(request, pim, key, user)
        if found.well_known is not None:
            # *unverified*: Exchange refuses to delete a distinguished folder.
            raise fail(
                400,
                "ErrorDeleteDistinguishedFolder",
                "Distinguished folders cannot be deleted.",
                request,
            )
        pim.delete_folder(found.id)
        return Response(status_code=204)


def routes() -> list[BaseRoute]:
    base = "/v1.0/users/{user_id}"
    folder = f"{base}/contactFolders/{{folder_id}}"
    out: list[BaseRoute] = [
        Route(f"{base}/contactFolders", list_folders, methods=["GET"]),
        Route(f"{base}/contactFolders", create_folder, methods=["POST"]),
        Route(folder, get_folder, methods=["GET"]),
        Route(folder, delete_folder, methods=["DELETE"]),
        Route(f"{folder}/childFolders", list_folders, methods=["GET"]),
        Route(f"{folder}/childFolders", create_folder, methods=["POST"]),
    ]
    for contacts in (f"{base}/contacts", f"{folder}/contacts"):
        out += [
            Route(contacts, list_contacts, methods=["GET"]),
            Route(contacts, create_contact, methods=["POST"]),
            Route(f"{contacts}/{{contact_id}}", get_contact, methods=["GET"]),
            Route(f"{contacts}/{{contact_id}}", update_contact, methods=["PATCH"]),
            Route(f"{contacts}/{{contact_id}}", delete_contact, methods=["DELETE"]),
        ]
    return out
