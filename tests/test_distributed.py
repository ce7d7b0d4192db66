"""Under torchrun (gloo, 2 CPU processes): the loop trains like one process with the same
global batch and resumes in one; distillation deals out chunks; the CLI's `--nproc` runs teacher
training and `compress` with rank 0 alone writing."""

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
DISTILL_SCRIPT = Path(__file__).with_name("distributed_distill.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], nproc: int) -> subprocess.CompletedProcess:
    """`python ARGS` in one process, or under torch.distributed.run with `nproc` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
                     "--master_port", str(free_port())]
    result = subprocess.run(launcher + args, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def run(tmp: Path, name: str, steps: int, nproc: int, run_dir: Path | None = None):
    out = tmp / name
    run_dir = run_dir or tmp / f"{name}.run"
    launch([str(SCRIPT), str(run_dir), str(steps), str(out)], nproc)
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


def test_distillation_deals_chunks_to_ranks(tmp_path, tiny_teacher_dir, tiny_corpus):
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"distill-{nproc}.json"
        launch([str(DISTILL_SCRIPT), str(tiny_teacher_dir), str(tiny_corpus), str(tmp_path / f"cache-{nproc}"),
                str(out)], nproc)
        results[nproc] = json.loads(out.read_text())
    # 96 sentences in 6 chunks: each sentence translated once in all (summed over ranks), none twice
    assert results[2]["translated"] == results[1]["translated"] == 96
    assert results[2]["pairs"] == results[1]["pairs"]
    assert not any(name.endswith(".parts") for name in results[2]["cache_files"])


def wdctl(*args) -> subprocess.CompletedProcess:
    return launch(["-m", "wdctl", *map(str, args)], 1)


def logged_steps(log: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


def test_cli_nproc_trains_teacher_and_compresses_with_rank_0_writing(tmp_path, tiny_corpus):
    from transformers import MarianMTModel

    teacher = tmp_path / "teacher"
    result = wdctl("teacher", "train", "--data", tiny_corpus, "--out", teacher, "--preset", "tiny",
                   "--max-steps", 10, "--vocab-size", 400, "--accum", 2, "--nproc", 2)
    assert result.stdout.count("teacher written to") == 1
    assert logged_steps(tmp_path / "teacher.run" / "log.jsonl") == [10]  # rank 0 alone logs
    assert json.loads((tmp_path / "teacher.run" / "config.json").read_text())["processes"] == 2
    MarianMTModel.from_pretrained(teacher, use_safetensors=True)

    student = tmp_path / "student"
    result = wdctl("compress", teacher, "--data", tiny_corpus, "--out", student, "--student", "halved",
                   "--phase1-steps", 4, "--phase2-steps", 4, "--accum", 2, "--no-export", "--distill-beams", 1,
                   "--eval-sentences", 0, "--distill-cache", tmp_path / "cache", "--nproc", 2)
    assert result.stdout.count("student written to") == 1
    run_dir = tmp_path / "student.run"
    for phase in ("phase1", "phase2"):
        assert logged_steps(run_dir / phase / "log.jsonl") == [4]
        assert json.loads((run_dir / phase / "done.json").read_text())["steps"] == 4
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["distill"]["translated"] == metrics["training_pairs"]["original"]
    MarianMTModel.from_pretrained(student, use_safetensors=True)


def test_nproc_refuses_an_accum_the_processes_cannot_share(cli, tmp_path, tiny_corpus):
    code, _, err = cli("teacher", "train", "--data", tiny_corpus, "--out", tmp_path / "t", "--preset", "tiny",
                       "--accum", 3, "--nproc", 2)
    assert code == 2 and "--accum 3 must be a multiple of the number of processes (2)" in err
    assert not (tmp_path / "t").exists() and not (tmp_path / "t.run").exists()


def test_nproc_must_match_the_torchrun_world(cli, tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as a torchrun worker sees it
    code, _, err = cli("compress", tiny_corpus, "--data", tiny_corpus, "--out", tmp_path / "s", "--accum", 2,
                       "--nproc", 3)
    assert code == 2 and "--nproc 3 but torchrun started 2 processes" in err


def test_ctrl_c_under_nproc_checkpoints_and_resumes(tmp_path, tiny_corpus):
    """Ctrl-C to the terminal's process group (launcher, torchrun, workers): exit 130 with a
    checkpoint; the same command then resumes from it."""
    import signal
    import time

    out, run_dir = tmp_path / "teacher", tmp_path / "teacher.run"
    args = [sys.executable, "-m", "wdctl", "teacher", "train", "--data", str(tiny_corpus), "--out", str(out),
            "--preset", "tiny", "--vocab-size", "400", "--accum", "2", "--nproc", "2"]
    env = {k: v for k, v in os.environ.items() if k != "WORLD_SIZE"}
    proc = subprocess.Popen(args + ["--max-steps", "100000"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (run_dir / "log.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    saved = sorted((run_dir / "checkpoints").glob("step-*"))
    assert saved and not out.exists()
    step = int(saved[-1].name.split("-")[1])
    result = wdctl(*args[3:], "--max-steps", step + 4)
    assert f"resuming from {saved[-1]} (step {step})" in result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == step + 4
