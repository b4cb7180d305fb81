"""The sandbox's AWS WorkMail face driven by the real boto3 client over HTTPS (sandbox CA),
SigV4 signed by botocore and verified by the face with botocore's signer; the coexist adapter
(`tenants/workmail.py`) over it; and the same state served over EWS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from exchangelib import Message
from exchangelib.errors import ErrorAccessDenied

from coexist.errors import AuthenticationError, Conflict, NotFound
from coexist.retry import RetryPolicy
from coexist.sandbox import Sandbox
from coexist.sandbox.workmail import (
    CALLS_KEY,
    ERRORS_KEY,
    THROTTLE_KEY,
    check_output,
    service_model,
)
from coexist.tenants.workmail import WorkMailAdmin, WorkMailEndpoint
from tests import ewsclient as ec

PASSWORD = "Initial-Pass-42"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def wm(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The target as a WorkMail organisation; no sandbox bug met while serving."""
    ec.org(sandbox, "target", "workmail")
    assert sandbox.ctx is not None
    sandbox.ctx.extra[ERRORS_KEY] = []
    sandbox.ctx.extra[CALLS_KEY] = []
    sandbox.ctx.extra[THROTTLE_KEY] = 0
    yield sandbox
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _info(sb: Sandbox) -> dict[str, Any]:
    info: dict[str, Any] = sb.connection["tenants"]["target"]["workmail"]
    return info


def client(sb: Sandbox, *, secret: str | None = None, region: str | None = None) -> Any:
    info = _info(sb)
    return boto3.client(
        "workmail",
        endpoint_url=info["endpoint"],
        region_name=region or info["region"],
        aws_access_key_id=info["access_key_id"],
        aws_secret_access_key=secret or info["secret_access_key"],
        verify=sb.connection["ca_file"],
        config=NO_RETRY,
    )


def _domain(sb: Sandbox) -> str:
    from coexist.sandbox.ews.orgs import org_domain

    return org_domain(sb.world.tenants["target"])


def test_list_and_describe_organization(wm: Sandbox) -> None:
    """ListOrganizations names the sandbox's WorkMail organisation; DescribeOrganization
    answers its default mail domain; both answers conform to botocore's model."""
    c = client(wm)
    orgs = c.list_organizations()["OrganizationSummaries"]
    assert [o["OrganizationId"] for o in orgs] == [_info(wm)["organization_id"]]
    d = c.describe_organization(OrganizationId=_info(wm)["organization_id"])
    assert d["State"] == "Active" and d["DefaultMailDomain"] == _domain(wm)
    assert d["ARN"].startswith("arn:aws:workmail:us-east-1:")


def test_user_lifecycle_each_operation(wm: Sandbox) -> None:
    """CreateUser, DescribeUser (DISABLED), RegisterToWorkMail, ListUsers (ENABLED, with its
    email), CreateAlias, ListAliases, PutMailboxPermissions, ListMailboxPermissions."""
    c = client(wm)
    org = _info(wm)["organization_id"]
    dom = _domain(wm)
    uid = c.create_user(
        OrganizationId=org, Name="nina.berg", DisplayName="Nina Berg", Password=PASSWORD
    )["UserId"]
    assert c.describe_user(OrganizationId=org, UserId=uid)["State"] == "DISABLED"
    c.register_to_work_mail(OrganizationId=org, EntityId=uid, Email=f"nina.berg@{dom}")
    d = c.describe_user(OrganizationId=org, UserId=f"nina.berg@{dom}")
    assert (d["State"], d["Email"], d["DisplayName"]) == (
        "ENABLED",
        f"nina.berg@{dom}",
        "Nina Berg",
    )
    users = c.list_users(OrganizationId=org, Filters={"UsernamePrefix": "nina"})["Users"]
    assert [(u["Id"], u["Email"]) for u in users] == [(uid, f"nina.berg@{dom}")]
    c.create_alias(OrganizationId=org, EntityId=uid, Alias=f"nb@{dom}")
    assert c.list_aliases(OrganizationId=org, EntityId=uid)["Aliases"] == [f"nb@{dom}"]
    svc = ec.migration_account(wm, "target")  # the EWS face's migration account
    account = c.list_users(OrganizationId=org, Filters={"UsernamePrefix": "svc-migrate"})
    grantee = account["Users"][0]
    assert grantee["Email"] == svc
    c.put_mailbox_permissions(
        OrganizationId=org, EntityId=uid, GranteeId=grantee["Id"], PermissionValues=["FULL_ACCESS"]
    )
    perms = c.list_mailbox_permissions(OrganizationId=org, EntityId=uid)["Permissions"]
    assert perms == [
        {"GranteeId": grantee["Id"], "GranteeType": "USER", "PermissionValues": ["FULL_ACCESS"]}
    ]


def test_registered_user_is_an_ews_mailbox_the_grant_opens(wm: Sandbox) -> None:
    """A user created and registered over the API has a mailbox the EWS face serves, and the
    PutMailboxPermissions FULL_ACCESS grant is what lets the migration account open it."""
    c = client(wm)
    org = _info(wm)["organization_id"]
    dom = _domain(wm)
    uid = c.create_user(OrganizationId=org, Name="omar.haddad", DisplayName="Omar Haddad")["UserId"]
    c.register_to_work_mail(OrganizationId=org, EntityId=uid, Email=f"omar.haddad@{dom}")
    login = ec.migration_account(wm, "target")
    ec.use_ca(wm.connection["ca_file"])
    account = ec.account(wm, "target", login, f"omar.haddad@{dom}", kind="workmail", auth=ec.BASIC)
    with pytest.raises(ErrorAccessDenied):
        account.inbox.all().count()
    c.put_mailbox_permissions(
        OrganizationId=org, EntityId=uid, GranteeId=login, PermissionValues=["FULL_ACCESS"]
    )
    ec.use_ca(wm.connection["ca_file"])  # a fresh protocol: no cached refusal
    account = ec.account(wm, "target", login, f"omar.haddad@{dom}", kind="workmail", auth=ec.BASIC)
    Message(account=account, folder=account.inbox, subject="hello").save()
    assert account.inbox.all().count() == 1
    # Taking FULL_ACCESS away closes the mailbox again.
    c.put_mailbox_permissions(
        OrganizationId=org, EntityId=uid, GranteeId=login, PermissionValues=["SEND_AS"]
    )
    perms = c.list_mailbox_permissions(OrganizationId=org, EntityId=uid)["Permissions"]
    assert [p["PermissionValues"] for p in perms] == [["SEND_AS"]]


def test_duplicate_user_and_double_registration_answer_awss_errors(wm: Sandbox) -> None:
    """A second CreateUser of a name: NameAvailabilityException; a second RegisterToWorkMail:
    EntityAlreadyRegisteredException; an address another user holds: EmailAddressInUse."""
    c = client(wm)
    org = _info(wm)["organization_id"]
    dom = _domain(wm)
    uid = c.create_user(OrganizationId=org, Name="ivy.chen", DisplayName="Ivy Chen")["UserId"]
    with pytest.raises(c.exceptions.NameAvailabilityException):
        c.create_user(OrganizationId=org, Name="ivy.chen", DisplayName="Ivy Chen")
    c.register_to_work_mail(OrganizationId=org, EntityId=uid, Email=f"ivy.chen@{dom}")
    with pytest.raises(c.exceptions.EntityAlreadyRegisteredException):
        c.register_to_work_mail(OrganizationId=org, EntityId=uid, Email=f"ivy.chen@{dom}")
    other = c.create_user(OrganizationId=org, Name="ivy.two", DisplayName="Ivy Two")["UserId"]
    with pytest.raises(c.exceptions.EmailAddressInUseException):
        c.register_to_work_mail(OrganizationId=org, EntityId=other, Email=f"ivy.chen@{dom}")
    with pytest.raises(c.exceptions.MailDomainNotFoundException):
        c.register_to_work_mail(OrganizationId=org, EntityId=other, Email="ivy@elsewhere.example")
    with pytest.raises(c.exceptions.EntityNotFoundException):
        c.describe_user(OrganizationId=org, UserId="nobody-at-all")
    with pytest.raises(c.exceptions.OrganizationNotFoundException):
        c.list_users(OrganizationId="m-" + "0" * 32)


def test_bad_signature_is_refused(wm: Sandbox) -> None:
    """A request signed with a wrong secret: InvalidSignatureException; an unknown access key:
    UnrecognizedClientException; a credential scoped to another region: refused too."""
    with pytest.raises(ClientError) as bad:
        client(wm, secret="not-the-secret-" + "x" * 25).list_organizations()
    assert bad.value.response["Error"]["Code"] == "InvalidSignatureException"
    info = _info(wm)
    stranger = boto3.client(
        "workmail",
        endpoint_url=info["endpoint"],
        region_name=info["region"],
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key=info["secret_access_key"],
        verify=wm.connection["ca_file"],
        config=NO_RETRY,
    )
    with pytest.raises(ClientError) as unknown:
        stranger.list_organizations()
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"
    with pytest.raises(ClientError) as region:
        client(wm, region="eu-west-1").list_organizations()
    assert region.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert wm.ctx is not None and wm.ctx.extra[CALLS_KEY] == []  # nothing ran


def test_tampered_body_after_signing_is_refused(wm: Sandbox) -> None:
    """The signature covers the body: a body changed after signing is refused (botocore's
    before-send hook changes the signed request, as a proxy would)."""
    c = client(wm)

    def tamper(request: Any, **_: Any) -> None:
        body = json.loads(request.body)
        body["Name"] = "mallory"
        request.body = json.dumps(body).encode()
        request.headers["Content-Length"] = str(len(request.body))

    c.meta.events.register("before-send.workmail.CreateUser", tamper)
    with pytest.raises(ClientError) as err:
        c.create_user(OrganizationId=_info(wm)["organization_id"], Name="alice", DisplayName="A")
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_request_shape_checked_against_the_model(wm: Sandbox) -> None:
    """A request breaking the model's constraints (botocore's client-side validation off,
    so it reaches the face) is answered with a ValidationException naming the member."""
    info = _info(wm)
    loose = boto3.client(
        "workmail",
        endpoint_url=info["endpoint"],
        region_name=info["region"],
        aws_access_key_id=info["access_key_id"],
        aws_secret_access_key=info["secret_access_key"],
        verify=wm.connection["ca_file"],
        config=Config(parameter_validation=False, retries={"total_max_attempts": 1}),
    )
    with pytest.raises(ClientError) as err:
        loose.list_users(OrganizationId="not-an-org")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "organizationId" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        loose.create_user(OrganizationId=info["organization_id"], Name="x")
    assert "displayName" in missing.value.response["Error"]["Message"]


def test_every_served_operation_is_in_the_model_and_checks_answers() -> None:
    """Contract: each served operation exists in botocore's WorkMail model, and the answer
    checker refuses a member the model lacks."""
    from coexist.sandbox.workmail import OPERATIONS

    model = service_model()
    assert set(OPERATIONS) <= set(model.operation_names)
    shape = model.operation_model("DescribeUser").output_shape
    assert check_output(shape, {"UserId": "x", "Name": "n"}) == []
    assert check_output(shape, {"UserId": "x", "Mailbox": "y"}) == [".Mailbox: not in the model"]
    assert check_output(shape, {"UserId": "x", "State": "ASLEEP"}) != []


def _adapter(sb: Sandbox, retry: RetryPolicy | None = None, plan: Any = None) -> WorkMailAdmin:
    info = _info(sb)
    ep = WorkMailEndpoint(
        info["region"],
        info["organization_id"],
        info["access_key_id"],
        info["endpoint"],
        sb.connection["ca_file"],
    )
    return WorkMailAdmin(
        ep, info["secret_access_key"], read_retry=retry or RetryPolicy(base_s=0.01), plan=plan
    )


def test_adapter_maps_errors_and_retries_throttling(wm: Sandbox) -> None:
    """The adapter: ThrottlingException answers are retried by coexist's policy until the read
    succeeds; a duplicate name is a Conflict, an unknown user NotFound, a wrong secret an
    AuthenticationError whose text never carries the secret."""

    async def run() -> None:
        admin = _adapter(wm)
        assert wm.ctx is not None
        wm.ctx.extra[THROTTLE_KEY] = 3
        users = await admin.users()
        assert users and wm.ctx.extra[THROTTLE_KEY] == 0
        assert admin.calls >= 4  # three throttled answers, then the page
        await admin.call("CreateUser", Name="dup.user", DisplayName="Dup")
        with pytest.raises(Conflict) as dup:
            await admin.call("CreateUser", Name="dup.user", DisplayName="Dup")
        assert dup.value.code == "NameAvailabilityException"
        with pytest.raises(NotFound):
            await admin.call("DescribeUser", UserId="nobody-at-all")
        info = _info(wm)
        wrong = WorkMailAdmin(
            WorkMailEndpoint(
                info["region"],
                info["organization_id"],
                info["access_key_id"],
                info["endpoint"],
                wm.connection["ca_file"],
            ),
            "wrong-secret-value-1234567890",
            read_retry=RetryPolicy(max_attempts=1),
        )
        with pytest.raises(AuthenticationError) as auth:
            await wrong.organization()
        assert "wrong-secret" not in str(auth.value) and auth.value.next_step
        await admin.close()
        await wrong.close()

    asyncio.run(run())


def test_chaos_profile_faults_are_retried_by_the_adapter(tmp_path: Any) -> None:
    """Under profile chaos (a seeded half of the calls fail: ThrottlingException or
    ServiceUnavailable), the adapter's reads complete through coexist's retry policy; the
    face counted fewer accepted calls than the adapter sent."""
    with Sandbox(
        tmp_path / "sb", seed=5, users=10, profile="chaos", kinds={"target": "workmail"}
    ) as sb:
        assert sb.ctx is not None
        sb.world.settings.chaos_rate = 0.5
        sb.ctx.extra[ERRORS_KEY] = []
        sb.ctx.extra[CALLS_KEY] = []

        async def run() -> int:
            admin = _adapter(sb, retry=RetryPolicy(max_attempts=12, base_s=0.001, cap_s=0.01))
            for _ in range(5):
                assert (await admin.organization())["State"] == "Active"
                assert await admin.users()
            await admin.close()
            return admin.calls

        sent = asyncio.run(run())
        assert len(sb.ctx.extra[CALLS_KEY]) == 10 < sent
        assert sb.ctx.extra[ERRORS_KEY] == []
