"""Deterministic tenant-pair generator (same seed and size, same tenants).

MINIMAL FIRST CUT: a helper replaces the body of `generate` with the full
generator of issue 2 item 8; the signature and the app registrations stay.
"""

from __future__ import annotations

import random
import uuid

from .model import (
    App,
    Domain,
    RemoteDomain,
    Settings,
    Sku,
    Tenant,
    User,
    World,
)

GRAPH_APP_ROLES = [
    "User.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
    "Organization.Read.All",
    "Mail.ReadWrite",
    "MailboxSettings.ReadWrite",
    "Calendars.ReadWrite",
    "Contacts.ReadWrite",
    "Tasks.ReadWrite.All",
    "MailboxItem.ImportExport.All",
    "Mail.Send",
]
SOURCE_DOMAIN = "fabrikam.example"
TARGET_DOMAIN = "contoso.example"


def stable_guid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def new_tenant(rng: random.Random, key: str, org: str, vanity: str) -> Tenant:
    tid = stable_guid(rng)
    initial = f"{org.lower()}.onmicrosoft.com"
    tenant = Tenant(
        tenant_id=tid,
        display_name=org,
        initial_domain=initial,
        domains=[
            Domain(initial, is_verified=True, is_default=False, is_initial=True),
            Domain(vanity, is_verified=True, is_default=True),
        ],
        legacy_dn_prefix=(
            "/o=ExchangeLabs/ou=Exchange Administrative Group (FYDIBOHF23SPDLT)/cn=Recipients"
        ),
        remote_domains=[RemoteDomain("Default", "*", auto_forward_enabled=True)],
    )
    tenant.apps.append(
        App(
            client_id=stable_guid(rng),
            display_name=f"coexist-{key}",
            client_secret=f"sandbox-{key}-" + uuid.UUID(int=rng.getrandbits(128)).hex,
            graph_roles=list(GRAPH_APP_ROLES),
            exchange_manage_as_app=True,
            exchange_roles=["Exchange Administrator"],
        )
    )
    return tenant


def add_mailbox(tenant: Tenant, rng: random.Random, alias: str, display: str, domain: str) -> User:
    upn = f"{alias}@{domain}"
    user = User(
        id=stable_guid(rng),
        display_name=display,
        name=display[:64],
        alias=alias,
        user_principal_name=upn,
        email_addresses=[f"SMTP:{upn}", f"smtp:{alias}@{tenant.initial_domain}"],
        recipient_type_details="UserMailbox",
        exchange_guid=stable_guid(rng),
        usage_location="US",
    )
    user.legacy_exchange_dn = f"{tenant.legacy_dn_prefix}/cn={uuid.UUID(int=rng.getrandbits(128)).hex}-{alias[:20]}"
    tenant.users[user.id] = user
    return user


def generate(seed: int = 1, users: int = 50, settings: Settings | None = None) -> World:
    """A source and target tenant pair; deterministic for (seed, users)."""
    rng = random.Random(seed)
    source = new_tenant(rng, "source", "Fabrikam", SOURCE_DOMAIN)
    target = new_tenant(rng, "target", "Contoso", TARGET_DOMAIN)
    for i in range(users):
        add_mailbox(source, rng, f"user{i:04d}", f"User {i:04d}", SOURCE_DOMAIN)
    sku = Sku(sku_id=stable_guid(rng), sku_part_number="ENTERPRISEPACK", enabled=max(1, users))
    target.skus.append(sku)
    s = settings or Settings()
    s.seed = seed
    return World(tenants={"source": source, "target": target}, settings=s)
