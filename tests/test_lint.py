"""The code passes ruff's checks (rules in ``[tool.ruff]`` of pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ruff"), "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"ruff check found problems (`ruff check --fix` fixes some):\n{done.stdout}{done.stderr}"
