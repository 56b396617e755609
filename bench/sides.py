"""Before/after benchmarks side by side: the baseline's code tree and one figure per fresh process.

`before` is a git ref extracted by `git archive` into a folder and run with the same interpreter as
the working tree (`after`), each figure in its own process so neither side's imports or caches help
the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def baseline_tree(ref: str, work: Path) -> Path:
    """The code of `ref` extracted into work/before."""
    before = work / "before"
    before.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    return before


def run_json(code_root: Path, script: str, *argv: str) -> Any:
    """Run `script` (python -c) on the code of `code_root`; the JSON of its last output line."""
    env = dict(os.environ, PYTHONPATH=str(code_root))
    out = subprocess.run([sys.executable, "-c", script, *argv], cwd=code_root, env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"{code_root}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
