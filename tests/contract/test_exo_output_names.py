"""Objects the sandbox's Exchange admin face (InvokeCommand) returns keep Exchange's names.

Microsoft publishes no output schema for cmdlets, so the check is: every key of
every returned object is a parameter of a cmdlet on the same noun in the cmdlet
reference (`coexist/data/exo-cmdlets.json`: a settable property is spelled as its
parameter), or a property name Microsoft's docs use, listed with its source in
`exchange_properties.py`. The cmdlets come from the face's dispatch table, so a
newly served cmdlet is walked too: every Get- cmdlet lists the seeded tenant
(identities for those that need one come from the Get- cmdlet of the enclosing
noun: Get-DistributionGroupMember from Get-DistributionGroup), and every other
cmdlet runs its valid call of the conformance test on a fresh tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox
from coexist.sandbox.exo.invoke import served_cmdlets
from tests.clients import exo_http, invoke
from tests.contract.exchange_properties import EXCHANGE_PROPERTIES
from tests.integration.test_exo_conformance import KEY, VALID, arrange

GETS = [c for c in served_cmdlets() if c.startswith("Get-")]
WRITES = [c for c in served_cmdlets() if not c.startswith("Get-")]
IDENTITIES_PER_LIST = 5


def noun(cmdlet: str) -> str:
    return cmdlet.split("-", 1)[1]


@cache
def reference() -> dict[str, Any]:
    raw = resources.files("coexist").joinpath("data", "exo-cmdlets.json").read_text()
    cmdlets: dict[str, Any] = json.loads(raw)["cmdlets"]
    return cmdlets


def same_noun_parameters(cmdlet: str) -> set[str]:
    """Every parameter of every cmdlet on `cmdlet`'s noun in the reference."""
    return {
        p
        for name, spec in reference().items()
        if noun(name) == noun(cmdlet)
        for p in spec["parameters"]
    }


def misnamed(cmdlet: str, rows: list[dict[str, Any]]) -> list[str]:
    """Keys of `rows` that are neither same-noun parameters nor documented properties."""
    allowed = same_noun_parameters(cmdlet) | set(EXCHANGE_PROPERTIES)
    return sorted({k for row in rows for k in row if k not in allowed})


def rows_of(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    value: list[dict[str, Any]] = resp.json()["value"]
    return value


def enclosing_list(cmdlet: str) -> str | None:
    """The served Get- cmdlet of the longest noun that prefixes this one's."""
    found = [g for g in GETS if g != cmdlet and noun(cmdlet).startswith(noun(g))]
    return max(found, key=len, default=None)


def listed(exo: httpx.Client, conn: dict[str, Any], cmdlet: str) -> list[dict[str, Any]]:
    """Every object a Get- cmdlet returns for the tenant (per identity where it needs one)."""
    bare = invoke(exo, conn, KEY, cmdlet)
    if bare.status_code == 200:
        return rows_of(bare)
    source = enclosing_list(cmdlet)
    assert source is not None, f"{cmdlet} needs parameters: {bare.text}"
    out: list[dict[str, Any]] = []
    for parent in rows_of(invoke(exo, conn, KEY, source))[:IDENTITIES_PER_LIST]:
        out += rows_of(invoke(exo, conn, KEY, cmdlet, Identity=parent["Identity"]))
    return out


@pytest.fixture
def exo(sandbox: Sandbox, conn: dict[str, Any]) -> Iterator[httpx.Client]:
    arrange(sandbox)
    with exo_http(conn, KEY) as client:
        yield client


def test_every_get_cmdlet_returns_exchange_names(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Every served Get- cmdlet returns objects, and their keys are Exchange property names."""
    empty, wrong = [], {}
    for cmdlet in GETS:
        rows = listed(exo, conn, cmdlet)
        if not rows:
            empty.append(cmdlet)
        if bad := misnamed(cmdlet, rows):
            wrong[cmdlet] = bad
    assert not empty, f"no objects to check from {empty}: seed them"
    assert not wrong, f"keys that are not Exchange property names: {wrong}"


@pytest.mark.parametrize("cmdlet", WRITES)
def test_write_cmdlet_output_keeps_exchange_names(
    cmdlet: str, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """A write cmdlet's output objects (New-* returns the new object) use Exchange's names."""
    rows = rows_of(invoke(exo, conn, KEY, cmdlet, **VALID[cmdlet]()))
    assert misnamed(cmdlet, rows) == []


def test_the_check_refuses_an_invented_name() -> None:
    """A key that is no parameter of the noun and no documented property is reported."""
    assert misnamed("Get-Mailbox", [{"PrimarySmtpAddress": "a@b", "SizeInBytes": 1}]) == [
        "SizeInBytes"
    ]
    assert misnamed("Get-Mailbox", [{"ForwardingSmtpAddress": None, "Identity": "x"}]) == []
