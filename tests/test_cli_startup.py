"""`wdctl --help` (and each command's --help) starts without torch or transformers: the command
modules import the heavy modules inside the command functions, and option help texts come
from torch-free modules (e.g. `wdctl.passes.presets`)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "onnxruntime", "optimum")

CODE = """
import sys
from wdctl.cli import main
try:
    rc = main({argv!r})
except SystemExit as exc:  # typer may exit instead of returning
    rc = exc.code
heavy = [m for m in {heavy!r} if m in sys.modules]
print("RESULT", rc, ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv", [["--help"], ["teacher", "train", "--help"], ["compress", "--help"],
                                  ["export", "--help"], ["bench", "--help"], ["translate", "--help"],
                                  ["demo", "--help"], ["data", "--help"], ["--version"]])
def test_help_imports_no_torch(argv):
    proc = subprocess.run([sys.executable, "-c", CODE.format(argv=argv, heavy=HEAVY)], capture_output=True,
                          text=True, check=False, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert result, proc.stdout[-2000:] + proc.stderr[-2000:]
    _, rc, heavy = result[-1].split()
    assert rc in ("0", "None"), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert heavy == "-", f"`wdctl {' '.join(argv)}` imported {heavy}"


def test_teacher_presets_are_the_ones_marian_builds():
    from wdctl.passes import marian, presets

    assert marian.TEACHER_PRESETS is presets.TEACHER_PRESETS
    assert marian.describe_presets() == presets.describe_presets()
