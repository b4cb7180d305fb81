"""What an operator reads from a demo run with its output in files: no bare GUID on any line,
plain lines only (no terminal control codes), the passes' estimate, progress summaries and
the estimate against the actual; the GUIDs stay in --json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_env import assert_no_unawaited_coroutine, cli_env

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
CONTROL = re.compile(r"[\x1b\r]")


def demo(tmp_path: Path, scenario: str, users: int, *extra: str) -> tuple[str, str, int]:
    """`coexist demo` as an operator runs it with stdout and stderr redirected to files."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    args = ["demo", "--scenario", scenario, "--dir", str(tmp_path / "demo"), "--users", str(users)]
    with out.open("wb") as o, err.open("wb") as e:
        rc = subprocess.run(
            [sys.executable, "-m", "coexist.cli", *args, *extra],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            env=cli_env(),
            timeout=600,
            check=False,
        ).returncode
    return out.read_text(), err.read_text(), rc


@pytest.mark.parametrize(("scenario", "users"), [("m365", 10), ("imap", 3), ("workmail", 2)])
def test_demo_output_names_objects_and_writes_plain_progress(
    tmp_path: Path, scenario: str, users: int
) -> None:
    """No line of the demo's output (step lines, plans, tables, summaries) holds a GUID; the
    progress view, not on a terminal, writes plain lines: the estimate before each pass,
    one-line batch summaries and the estimate against the actual."""
    stdout, stderr, rc = demo(tmp_path, scenario, users)
    assert_no_unawaited_coroutine(stdout + stderr, f"demo --scenario {scenario}")
    assert rc == 0, stderr[-3000:]
    lines = (stdout + stderr).splitlines()
    guids = [n for n in lines if GUID.search(n)]
    assert not guids, "lines with a bare GUID:\n" + "\n".join(guids[:10])
    assert not CONTROL.search(stdout + stderr), "terminal control codes in redirected output"
    err_lines = stderr.splitlines()
    # Before the pre-stage pass: its estimate, or why there is none yet (sizes unknown).
    assert any(n.startswith(("prestage: estimated", "prestage: no estimate")) for n in err_lines), (
        stderr[-3000:]
    )
    # The cutover pass comes after a pre-stage pass: its sizes are known, it is estimated.
    estimated = [n for n in err_lines if n.startswith("cutover: estimated")]
    assert estimated and all("an estimate" in n for n in estimated), stderr[-3000:]
    assert any(re.match(r"prestage: .*mailboxes done.*ETA", n) for n in err_lines)
    assert any(n.startswith("cutover: took") and "estimated" in n for n in err_lines)


def test_demo_json_keeps_ids_and_the_estimate_against_the_actual(tmp_path: Path) -> None:
    """--json: each pass's result carries its estimate (marked as one)
    and what the pass actually took."""
    stdout, stderr, rc = demo(tmp_path, "imap", 3, "--json")
    assert rc == 0, stderr[-3000:]
    result = json.loads(stdout)
    assert not CONTROL.search(stderr)
    cutover = result.get("cutover")
    found = [
        v["estimate"]
        for v in _walk(result)
        if isinstance(v, dict) and isinstance(v.get("estimate"), dict)
    ]
    assert found, f"no estimate in {sorted(result)} (cutover: {cutover is not None})"
    for est in found:
        assert est["is_estimate"] is True
        assert est["kind"] in ("prestage", "cutover", "trial")
        assert {"seconds", "items", "bytes"} <= set(est["actual"])
    assert any(est["kind"] == "cutover" and est["sized_mailboxes"] == 3 for est in found)


def _walk(value: object) -> list[object]:
    out: list[object] = [value]
    if isinstance(value, dict):
        for v in value.values():
            out += _walk(v)
    elif isinstance(value, list):
        for v in value:
            out += _walk(v)
    return out
