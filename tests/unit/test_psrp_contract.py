"""Contract: the remote PowerShell face serves only what on-premises Exchange has, per the
cmdlet reference (data/exo-cmdlets.json and the RBAC pages extracted beside it)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from coexist.exospec import SpecViolation, canonicalize
from coexist.sandbox.psrp import cmdlets


def reference() -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in ("exo-cmdlets.json", "exo-cmdlets-rbac.json"):
        text = resources.files("coexist.data").joinpath(name).read_text("utf-8")
        data.update(json.loads(text)["cmdlets"])
    return data


def test_served_cmdlets_are_on_premises_cmdlets() -> None:
    """Every served cmdlet is in the reference and applies to Exchange Server."""
    ref = reference()
    assert cmdlets.served() == sorted(cmdlets.TASK_CLASS)
    for name in cmdlets.served():
        assert name in ref, name
        assert ref[name]["on_premises_cmdlet"], name


@pytest.mark.parametrize("name", cmdlets.served())
def test_binding_accepts_exactly_the_on_premises_parameters(name: str) -> None:
    """Each reference parameter binds on-premises iff the reference says it exists there."""
    for pname, p in reference()[name]["parameters"].items():
        try:
            canonicalize(name, {pname: "x"}, "onprem")
            accepted = True
        except SpecViolation as v:
            assert v.kind == "online_only", (name, pname, v.kind)
            accepted = False
        assert accepted == bool(p["on_premises"]), (name, pname)


def test_modeled_parameters_exist_on_premises_or_are_refused() -> None:
    """A parameter the face models but on-premises lacks (EXO-only) is refused at binding."""
    ref = reference()
    for name in cmdlets.served():
        found = cmdlets.handler_of(name)
        assert found is not None
        _cmdlet, _fn, modeled, _write = found
        for pname in modeled:
            if not ref[name]["parameters"][pname]["on_premises"]:
                with pytest.raises(SpecViolation):
                    canonicalize(name, {pname: "x"}, "onprem")
