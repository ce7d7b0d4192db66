"""The layering contract (pyproject.toml, [tool.importlinter]): each layer imports only the
layers below it — the CLI > the demo > recipes and the bench > config > export > passes >
core — and no modules that are siblings import each other in a cycle. Function-level imports
count as imports.

`wdctl.passes` and `wdctl.export` live in `passes/` and `export/` (setuptools `package-dir`),
which import-linter cannot follow, so the check runs on a copy of the package laid out as it
is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {"wdctl": "wdctl", "passes": "wdctl/passes", "export": "wdctl/export"}


def installed_layout(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for source, target in LAYOUT.items():
        shutil.copytree(ROOT / source, dest / target, ignore=ignore)
    return dest


def test_layers_and_no_cycles(tmp_path):
    tree = installed_layout(tmp_path / "tree")
    lint = Path(sys.executable).with_name("lint-imports")
    assert lint.is_file(), "import-linter is missing: pip install -e '.[dev]'"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout
