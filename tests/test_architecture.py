"""The layers of the code and what DAG files may import, checked on the source."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAG_FILES = sorted((ROOT / "dags").glob("*.py"))


def test_layers_contract_is_kept():
    """``[tool.importlinter]`` in pyproject.toml: fleetwatch.app > jobs > models > feature_store > fleetwatch.core."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    broken = done.stdout[done.stdout.find("Broken contracts"):] if "Broken contracts" in done.stdout else done.stdout
    assert done.returncode == 0, f"lint-imports failed:\n{broken}\n{done.stderr}"


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``, inside functions too; relative imports as ``.``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def _allowed(module: str) -> bool:
    top = module.split(".")[0]
    application = module == "fleetwatch.app" or module.startswith("fleetwatch.app.")
    return top in sys.stdlib_module_names or top == "airflow" or application


def test_there_are_dag_files():
    assert {p.name for p in DAG_FILES} >= {"fleetwatch_nightly.py", "fleetwatch_retrain.py"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_only_airflow_stdlib_and_the_application(path):
    """DAG files orchestrate: they reach the platform through ``fleetwatch.app`` only."""
    imports = _imported(ast.parse(path.read_text()))
    wrong = [f"{path.name}:{line} imports {module}" for line, module in imports if not _allowed(module)]
    assert not wrong, "DAG files may import only airflow, the standard library and fleetwatch.app.*:\n" + "\n".join(wrong)
