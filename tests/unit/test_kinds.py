"""Endpoint kinds: what each kind of side can do, and the clear error when a command asks a
kind for a capability it lacks (engine/context.KIND_CAPABILITIES, COMMAND_NEEDS)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coexist.engine.context import COMMAND_NEEDS, Side, check_command, command_needs
from coexist.errors import ConfigError
from coexist.runtime import session

TGT_TID = "33333333-3333-3333-3333-333333333333"
TGT_CID = "44444444-4444-4444-4444-444444444444"
IMAP_TO_M365 = f"""\
[source]
kind = "imap"

[source.imap]
host = "imap.example.org"

[target]
tenant_id = "{TGT_TID}"
client_id = "{TGT_CID}"

[domains]
destination_domain = "fabrikam.com"
"""


def test_microsoft_365_sides_serve_every_command() -> None:
    """Two m365 sides (the only pair before kinds existed) are refused nothing."""
    for command in COMMAND_NEEDS:
        check_command({"source": "m365", "target": "m365"}, command)


@pytest.mark.parametrize("target", ["m365", "imap"])
def test_an_imap_source_can_be_prestaged_into_either_kind(target: str) -> None:
    """A data pass needs a store on each side, which every kind has."""
    check_command({"source": "imap", "target": target}, "prestage")


@pytest.mark.parametrize("target", ["m365", "imap"])
def test_an_imap_source_is_cut_over_by_its_full_pass(target: str) -> None:
    """An IMAP source's cutover is the operator's MX change then the full data pass: it
    needs stores only (no forwarding cmdlets on either side); an m365 source's still needs
    the cmdlets of both."""
    check_command({"source": "imap", "target": target}, "cutover")
    assert command_needs({"source": "imap", "target": target}, "cutover") == {
        "source": frozenset({"store"}),
        "target": frozenset({"store"}),
    }
    with pytest.raises(ConfigError) as info:
        check_command({"source": "m365", "target": "imap"}, "cutover")
    assert "the target is of kind 'imap'" in str(info.value)


@pytest.mark.parametrize(
    ("command", "side", "words"),
    [
        ("discover", "source", "batch import"),
        ("provision", "source", "batch import"),
        ("rollback", "source", "MX change"),
        ("verify-mailflow", "source", "batch import"),
        ("groups", "target", "Exchange cmdlets"),
    ],
)
def test_a_command_a_kind_cannot_serve_names_side_kind_and_what_instead(
    command: str, side: str, words: str
) -> None:
    """The error names the command, the side, its kind, the missing capability and the
    key to change, and says what the kind does instead where there is something."""
    kinds = {"source": "m365", "target": "m365", side: "imap"}
    with pytest.raises(ConfigError) as info:
        check_command(kinds, command, "/p/project.toml")
    text = str(info.value)
    assert f"coexist {command}" in text and f"the {side} is of kind 'imap'" in text, text
    assert words in text and info.value.fields["key"] == f"{side}.kind"


def test_a_side_gives_only_the_capabilities_of_its_kind() -> None:
    """An imap side has a store but no directory or cmdlets; asking for one is the clear
    ConfigError, not an AttributeError on a missing adapter."""
    imap = Side("source", None, None, None, kind="imap")  # type: ignore[arg-type]
    assert imap.has("store") and not imap.has("directory") and not imap.has("cmdlets")
    for capability in ("directory", "cmdlets"):
        with pytest.raises(ConfigError) as info:
            getattr(imap, capability)
        assert "needs" in str(info.value) and "on the source" in str(info.value)
    graph, exo = object(), object()
    m365 = Side("target", None, graph, exo)  # type: ignore[arg-type]
    assert m365.directory is graph and m365.cmdlets is exo and m365.store is graph


def test_a_refused_command_touches_neither_journal_nor_endpoint(tmp_path: Path) -> None:
    """`coexist discover` on an IMAP source stops at the project check: no journal file is
    made and no endpoint is contacted."""
    (tmp_path / "project.toml").write_text(IMAP_TO_M365)

    async def discover() -> None:
        async with session(tmp_path, "discover", {}, env={}):
            pass

    with pytest.raises(ConfigError) as info:
        asyncio.run(discover())
    assert "coexist discover" in str(info.value) and "batch import" in str(info.value)
    assert not (tmp_path / "journal.db").exists()
