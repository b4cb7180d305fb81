"""Run one of bench/'s scripts at `--quick` sizes, as `make bench` runs it, and read the one
JSON object it prints (the bench smoke tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_quick(script: str) -> dict[str, Any]:
    """`python bench/<script> --quick` from the repository root; fails with the end of its
    stderr when it does not exit 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out
