"""Folder mapping (pure): which target folder each source folder's items go to.

A source folder is named by its path of display names from the top of the mailbox
("Inbox/Projects/2024"). Well-known folders map by type (the source's Inbox goes to the
target's Inbox whatever either is called in its locale); custom folders map by path.
Operator rules ("regex->replacement", first match wins) rewrite the path text before that,
and include/exclude regexes choose folders. A "/" inside a display name is escaped as "\\/"
in the path text, so rules and filters see names with slashes as one component.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

SEPARATOR = "/"
RULE_ARROW = "->"


def join_path(parts: Sequence[str]) -> str:
    """Path text of display names; "\\" and "/" inside a name are escaped."""
    return SEPARATOR.join(p.replace("\\", "\\\\").replace("/", "\\/") for p in parts)


def split_path(text: str) -> tuple[str, ...]:
    """Inverse of `join_path`; empty components (a leading or doubled "/") are dropped."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == SEPARATOR:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return tuple(p for p in parts if p)


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    replacement: str


def parse_rule(text: str) -> Rule:
    """'regex->replacement' (the last '->' splits, so a regex may contain '->')."""
    if RULE_ARROW not in text:
        raise ValueError(f"folder rule {text!r}: expected 'regex->replacement'")
    pattern, _, replacement = text.rpartition(RULE_ARROW)
    try:
        return Rule(re.compile(pattern, re.IGNORECASE), replacement)
    except re.error as exc:
        raise ValueError(f"folder rule {text!r}: {exc}") from None


def _compile(patterns: Sequence[str], what: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p, re.IGNORECASE))
        except re.error as exc:
            raise ValueError(f"{what} {p!r}: {exc}") from None
    return tuple(out)


@dataclass(frozen=True)
class FolderRules:
    rules: tuple[Rule, ...] = ()
    include: tuple[re.Pattern[str], ...] = ()
    exclude: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def parse(
        cls,
        rules: Sequence[str] = (),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> FolderRules:
        return cls(
            tuple(parse_rule(r) for r in rules),
            _compile(include, "include_folders"),
            _compile(exclude, "exclude_folders"),
        )


@dataclass(frozen=True)
class SourceFolder:
    path: tuple[str, ...]  # display names from the top of the mailbox
    well_known: str | None = None  # this folder's own well-known name, if any


@dataclass(frozen=True)
class Destination:
    """Where a folder's items go: under the target's well-known folder `anchor` (None: the
    top of the mailbox), at `path` below it (empty: the anchor folder itself)."""

    anchor: str | None
    path: tuple[str, ...]


def selected(text: str, rules: FolderRules) -> bool:
    if rules.include and not any(p.search(text) for p in rules.include):
        return False
    return not any(p.search(text) for p in rules.exclude)


def rewrite(text: str, rules: FolderRules) -> str:
    for rule in rules.rules:
        if rule.pattern.search(text):
            return rule.pattern.sub(rule.replacement, text, count=1)
    return text


def map_folder(
    folder: SourceFolder, top_well_known: dict[str, str], rules: FolderRules
) -> Destination | None:
    """The destination of one folder, or None when the filters leave it out.

    `top_well_known` maps the casefolded display names of the source's top-level well-known
    folders to their well-known names ("inbox"): a rewritten path that starts with one lands
    under the target's folder of that type.
    """
    text = join_path(folder.path)
    if not selected(text, rules):
        return None
    if folder.well_known and len(folder.path) == 1 and rewrite(text, rules) == text:
        return Destination(folder.well_known, ())
    parts = split_path(rewrite(text, rules))
    if not parts:
        return None  # a rule that maps a folder to nothing leaves it out
    anchor = top_well_known.get(parts[0].casefold())
    if anchor is not None:
        return Destination(anchor, parts[1:])
    return Destination(None, parts)
