"""The contracts shipped in `coexist/data/` are Microsoft's published ones, unchanged.

CI runs on a clean clone, which has no `shared/spec/`, so the repository carries
copies. Where `shared/spec/` exists (next to the repository, or the team's
`/work/shared/spec`), the copies must match it: the CSDL byte for byte, the
cmdlet reference cmdlet by cmdlet. Another engineer may add a cmdlet to our
copy, extracted from the same source commit: that is allowed; a cmdlet of the
shared file that differs in ours is not. Without `shared/spec/` the tests still
check what the copies themselves say about their source.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[2] / "coexist" / "data"
CSDL = "graph-v1.0-csdl.xml.gz"
CMDLETS = "exo-cmdlets.json"
# Where the shared contracts live: ../shared/spec next to the repository, or the team's copy.
SHARED_CANDIDATES = (DATA.parents[2] / "shared" / "spec", Path("/work/shared/spec"))
# shared/spec/README.md: the sources of the two files.
CMDLET_SOURCE_COMMIT = "93336da2"
CSDL_NAMESPACE = b'<Schema Namespace="microsoft.graph" Alias="graph"'


def shared_spec() -> Path | None:
    """The shared spec directory when one exists on this machine."""
    return next((p for p in SHARED_CANDIDATES if (p / CSDL).is_file()), None)


# Our copy's key naming the cmdlets it adds to the shared reference, each with its reason.
ADDED = "added_to_copy"


def cmdlet_differences(shared: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Why `ours` is not the shared reference or a superset of it extracted from the same
    source (empty when it is)."""
    problems = [
        f"top-level {key!r} differs"
        for key in sorted(set(shared) | set(ours))
        if key not in ("cmdlets", "file_last_commits", ADDED) and shared.get(key) != ours.get(key)
    ]
    added = sorted(set(ours["cmdlets"]) - set(shared["cmdlets"]))
    if sorted(ours.get(ADDED) or {}) != added:
        # Every addition says why and where from, and nothing else is listed as added.
        problems.append(f"{ADDED!r} must name exactly the added cmdlets {added}")
    for name, spec in shared["cmdlets"].items():
        if ours["cmdlets"].get(name) != spec:
            problems.append(f"{name}: differs from the shared reference (or is missing)")
        if ours["file_last_commits"].get(name) != shared["file_last_commits"].get(name):
            problems.append(f"{name}: file_last_commits differs")
    sample = next(iter(shared["cmdlets"].values()))
    for name in sorted(set(ours["cmdlets"]) - set(shared["cmdlets"])):
        # An added cmdlet comes from the same extraction: same record shape, and the commit
        # of its source page recorded like the others'.
        if set(ours["cmdlets"][name]) != set(sample):
            problems.append(f"{name}: added, but not shaped like an extracted cmdlet")
        if name not in ours["file_last_commits"]:
            problems.append(f"{name}: added without its source page's commit")
    return problems


def test_shipped_csdl_is_the_graph_v1_metadata() -> None:
    """The shipped CSDL is a readable gzip of Graph v1.0's clean metadata (microsoft.graph)."""
    head = gzip.decompress((DATA / CSDL).read_bytes())[:400]
    assert CSDL_NAMESPACE in head


def test_shipped_cmdlets_name_their_source_commit() -> None:
    """The shipped cmdlet reference says it was extracted at the documented commit."""
    ours = json.loads((DATA / CMDLETS).read_text())
    assert CMDLET_SOURCE_COMMIT in ours["source"]
    assert set(ours["cmdlets"]) <= set(ours["file_last_commits"])


def test_csdl_copy_is_byte_identical_to_shared_spec() -> None:
    """Where shared/spec exists, the shipped CSDL is byte for byte the published one."""
    spec = shared_spec()
    if spec is not None:
        assert (DATA / CSDL).read_bytes() == (spec / CSDL).read_bytes()


def test_cmdlet_copy_keeps_every_shared_cmdlet_unchanged() -> None:
    """Where shared/spec exists, every cmdlet of the shared reference is identical in ours;
    cmdlets added from the same source are allowed."""
    spec = shared_spec()
    if spec is not None:
        shared = json.loads((spec / CMDLETS).read_text())
        ours = json.loads((DATA / CMDLETS).read_text())
        assert cmdlet_differences(shared, ours) == []


def test_cmdlet_check_refuses_a_changed_cmdlet_and_allows_an_added_one() -> None:
    """The superset rule itself: a changed shared cmdlet fails, an extracted and listed addition
    passes, an unlisted or unshaped addition fails."""
    shared = json.loads((DATA / CMDLETS).read_text())
    for name in shared.pop(ADDED, {}):  # the shared reference as it was before our additions
        del shared["cmdlets"][name], shared["file_last_commits"][name]
    added = json.loads(json.dumps(shared))
    added["cmdlets"]["Get-Example"] = dict(added["cmdlets"]["Get-Mailbox"])
    added["file_last_commits"]["Get-Example"] = "0" * 40 + " 2026-01-01"
    added[ADDED] = {"Get-Example": "why it was added, and from where"}
    assert cmdlet_differences(shared, added) == []
    unlisted = json.loads(json.dumps(added))
    del unlisted[ADDED]
    assert cmdlet_differences(shared, unlisted) == [
        f"{ADDED!r} must name exactly the added cmdlets ['Get-Example']"
    ]
    changed = json.loads(json.dumps(shared))
    changed["cmdlets"]["Get-Mailbox"]["exchange_online_cmdlet"] = False
    assert cmdlet_differences(shared, changed) == [
        "Get-Mailbox: differs from the shared reference (or is missing)"
    ]
    bare = json.loads(json.dumps(added))
    bare["cmdlets"]["Get-Example"] = {"parameters": {}}
    del bare["file_last_commits"]["Get-Example"]
    assert len(cmdlet_differences(shared, bare)) == 2


EWS_FILES = ("services.wsdl", "messages.xsd", "types.xsd")


def test_ews_schema_copies_are_the_shared_ones_byte_for_byte() -> None:
    """coexist/data/ews/ holds Exchange's EWS schema exactly as shared/spec/ews/ has it."""
    shared = shared_spec()
    for name in EWS_FILES:
        ours = (DATA / "ews" / name).read_bytes()
        assert b"http://schemas.microsoft.com/exchange/services/2006/" in ours[:4096], name
        if shared is not None:
            assert ours == (shared / "ews" / name).read_bytes(), f"ews/{name} differs"


def test_ews_schema_compiles_with_xmlschema() -> None:
    """The copied messages.xsd (importing types.xsd) compiles: the sandbox validates with it."""
    import xmlschema

    schema = xmlschema.XMLSchema(str(DATA / "ews" / "messages.xsd"))
    assert {"GetFolder", "SyncFolderItems", "ExportItems", "UploadItems"} <= set(schema.elements)
