"""Folder mapping: well-known by type, custom by path, rules, filters, awkward names."""

from __future__ import annotations

import pytest

from coexist.migrate.folders import (
    Destination,
    FolderRules,
    SourceFolder,
    join_path,
    map_folder,
    split_path,
)

TOP = {"inbox": "inbox", "sent items": "sentitems", "deleted items": "deleteditems"}


def test_well_known_folder_maps_by_type() -> None:
    """A well-known folder lands on the target's folder of the same type, not its name."""
    got = map_folder(
        SourceFolder(("Posteingang",), "inbox"), {"posteingang": "inbox"}, FolderRules()
    )
    assert got == Destination("inbox", ())


def test_custom_folder_maps_by_path_under_its_well_known_ancestor() -> None:
    """Inbox/Projects/2024 goes under the target Inbox at Projects/2024."""
    got = map_folder(SourceFolder(("Inbox", "Projects", "2024")), TOP, FolderRules())
    assert got == Destination("inbox", ("Projects", "2024"))


def test_top_level_custom_folder_maps_to_the_top() -> None:
    """A custom folder at the top stays at the top."""
    assert map_folder(SourceFolder(("Archive 2019",)), TOP, FolderRules()) == Destination(
        None, ("Archive 2019",)
    )


def test_rule_moves_inbox_children_to_the_top() -> None:
    """'^INBOX/->' (case-insensitive) lifts Inbox subfolders to the top of the mailbox."""
    rules = FolderRules.parse(["^INBOX/->"])
    assert map_folder(SourceFolder(("Inbox", "Clients", "Acme")), TOP, rules) == Destination(
        None, ("Clients", "Acme")
    )
    assert map_folder(SourceFolder(("Inbox",), "inbox"), TOP, rules) == Destination("inbox", ())


def test_first_matching_rule_wins() -> None:
    """Rules apply in order and only the first match rewrites."""
    rules = FolderRules.parse(["^Old/->Archive/", "^Old/->Elsewhere/"])
    got = map_folder(SourceFolder(("Old", "x")), TOP, rules)
    assert got == Destination(None, ("Archive", "x"))


def test_rule_can_target_a_well_known_folder() -> None:
    """A rewritten path starting with a well-known display name lands under that folder."""
    rules = FolderRules.parse(["^Legacy->Inbox/Legacy"])
    got = map_folder(SourceFolder(("Legacy", "a")), TOP, rules)
    assert got == Destination("inbox", ("Legacy", "a"))


def test_include_and_exclude_filters() -> None:
    """Excluded folders (and their children) and folders outside include are left out."""
    rules = FolderRules.parse(exclude=["^Deleted Items"], include=["^Inbox", "^Deleted"])
    assert map_folder(SourceFolder(("Deleted Items",), "deleteditems"), TOP, rules) is None
    assert map_folder(SourceFolder(("Deleted Items", "x")), TOP, rules) is None
    assert map_folder(SourceFolder(("Sent Items",), "sentitems"), TOP, rules) is None
    assert map_folder(SourceFolder(("Inbox", "y")), TOP, rules) == Destination("inbox", ("y",))


def test_names_with_slashes_quotes_and_non_ascii_survive() -> None:
    """A '/' inside a name is one component; quotes and non-ASCII pass through unchanged."""
    parts = ("Inbox", 'Q1/Q2 "plans"', "Ünïcødé 日本", "it's")
    text = join_path(parts)
    assert split_path(text) == parts
    got = map_folder(SourceFolder(parts), TOP, FolderRules())
    assert got == Destination("inbox", parts[1:])
    rules = FolderRules.parse(["^INBOX/->"])
    assert map_folder(SourceFolder(parts), TOP, rules) == Destination(None, parts[1:])


def test_deep_tree_keeps_every_level() -> None:
    """A 30-level deep path maps level for level."""
    parts = ("Inbox", *(f"L{i}" for i in range(30)))
    assert map_folder(SourceFolder(parts), TOP, FolderRules()) == Destination("inbox", parts[1:])


def test_bad_rules_are_refused() -> None:
    """A rule without '->' or with a broken regex is an error, not silently ignored."""
    with pytest.raises(ValueError):
        FolderRules.parse(["no arrow"])
    with pytest.raises(ValueError):
        FolderRules.parse(["(->x"])
