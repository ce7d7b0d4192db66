"""Two gloo processes train like one process with the same global batch, and resume in one."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_train.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(tmp: Path, name: str, steps: int, nproc: int, run_dir: Path | None = None):
    out = tmp / name
    run_dir = run_dir or tmp / f"{name}.run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port())]
    result = subprocess.run(launcher + [str(SCRIPT), str(run_dir), str(steps), str(out)], env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(out.read_text()), load_file(str(out) + ".safetensors"), run_dir


def test_two_processes_match_one_and_resume_in_one(tmp_path):
    single_losses, single_weights, _ = run(tmp_path, "single", 6, 1)
    ddp_losses, _, ddp_run = run(tmp_path, "ddp", 4, 2)
    assert ddp_losses == pytest.approx(single_losses[:4], rel=1e-4)
    assert len(list((ddp_run / "checkpoints").glob("step-*"))) >= 1
    # resume the 2-process run in one process up to step 6: same end state as uninterrupted
    resumed_losses, resumed_weights, _ = run(tmp_path, "resumed", 6, 1, run_dir=ddp_run)
    assert resumed_losses == pytest.approx(single_losses[4:], rel=1e-4)
    for name, value in single_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=1e-4, atol=1e-5)
