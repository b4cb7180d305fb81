"""Graph v1.0 face: one module per resource family, each a few Starlette routes.

Every response keeps Microsoft's shapes (`@odata.context`, absolute
`@odata.nextLink`, `@odata.count`, `{"error": {"code", "message", "innerError"}}`)
so msgraph-sdk's models parse it. Modules:

- `odata`      pure query-option helpers ($top, $select, $filter, $orderby, skip tokens)
- `common`     admission (token, roles, throttling), responses, keyset paging
- `users`      /users, /users/$count, /users/{id}, PATCH, /users/{id}/settings/exchange
- `groups`     /groups, members, transitiveMembers, member writes (security groups only)
- `licensing`  /subscribedSkus, /users/{id}/assignLicense, Exchange-side license effects
- `directory`  /domains, /organization
- `batch`      /$batch, dispatching inner requests in-process to the routes above
- `mail`       /users/{id}/sendMail, messages, mailFolders (Outlook resources; the mailstore)
- `exchange_io` /admin/exchange/mailboxes/{id}: folders, items, delta, exportItems, import
- `contacts`, `calendar`, `todo`  contacts, calendars/events/instances, To Do (the PIM store)
- `unserved`   every other `/v1.0/...` path: Graph's 400 "Resource not found for the segment"
"""

from starlette.routing import BaseRoute

from . import (
    batch,
    calendar,
    contacts,
    directory,
    exchange_io,
    groups,
    licensing,
    mail,
    todo,
    unserved,
    users,
)


def routes() -> list[BaseRoute]:
    face: list[BaseRoute] = [
        *users.routes(),
        *licensing.routes(),
        *groups.routes(),
        *directory.routes(),
        *mail.routes(),
        *exchange_io.routes(),
        *contacts.routes(),
        *calendar.routes(),
        *todo.routes(),
    ]
    face = unserved.wrap(face)  # Graph's answer for what no route serves
    batch.bind(face)
    return [*batch.routes(), *face]
