"""`wdctl compress` / `wdctl inspect` on the command line: plans, bad input, the memory guard,
resuming after Ctrl-C, and the run directory's guard against mixing settings."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from safetensors.torch import load_file

from wdctl.core.corpus import read_parallel

from conftest import write_tsv


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_corpus) -> Path:
    root = tmp_path_factory.mktemp("cli_corpus")
    for split, n in (("train", 120), ("dev", 10), ("test", 10)):
        write_tsv(root / f"{split}.en-es.tsv", read_parallel(tiny_corpus, split)[:n])
    return root


@pytest.fixture
def train_yaml(tmp_path) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text("max_tokens: 1024\nlog_every: 2\nsave_every: 4\neval_every: 1000\n"
                    "phase1: {max_steps: 6, lr: 0.003, warmup: 2}\nphase2: {max_steps: 4, lr: 0.002, warmup: 2}\n")
    return path


def common(corpus, out, train_yaml, cache):
    return ["--data", corpus, "--out", out, "--config", train_yaml, "--no-export", "--distill-cache", cache,
            "--eval-sentences", 0, "--threads", 1]


def test_help_explains_presets_and_methods(cli):
    code, out, _ = cli("compress", "--help")
    flat = " ".join(out.split())
    assert code == 0
    assert "half width" in flat and "TINY" in flat and "one d_model" in flat
    for word in ("--method", "cut-kd", "--dry-run", "--phase1-steps", "--kd-weight", "--no-export", "--threads"):
        assert word in flat


@pytest.mark.parametrize("student", ["tiny", "small"])
def test_dry_run_prints_the_plan_and_trains_nothing(cli, tiny_teacher_dir, tmp_path, student):
    out = tmp_path / "student"
    code, stdout, stderr = cli("compress", tiny_teacher_dir, "--student", student, "--dry-run", "--out", out)
    assert code == 0, stderr
    for text in ("class", "instances", "groups (teacher layers)", "decoder.fc1.weight", "shared",
                 "generator parameters:", "subset", "phase-1 memory estimate", "available", "dry run"):
        assert text in stdout, text
    assert not out.exists() and not Path(f"{out}.run").exists()


def test_inspect_is_the_plan_only_twin(cli, tiny_teacher_dir):
    code, stdout, _ = cli("inspect", tiny_teacher_dir, "--student", "small", "--decoder-layers", "1")
    assert code == 0
    assert "student encoder_layers=2 decoder_layers=1 d_model=64" in stdout
    assert "generator parameters:" in stdout


def test_student_from_yaml_with_overrides(cli, tiny_teacher_dir, tmp_path):
    spec = tmp_path / "student.yaml"
    spec.write_text("preset: halved\nencoder_layers: 1\n")
    code, stdout, stderr = cli("inspect", tiny_teacher_dir, "--student", spec, "--ffn-dim", 48)
    assert code == 0, stderr
    assert "encoder_layers=1 decoder_layers=1 d_model=32 encoder_ffn_dim=48 decoder_ffn_dim=48" in stdout


@pytest.mark.parametrize("flags, message", [
    (["--heads", 3], "does not divide d_model"),
    (["--decoder-layers", 5], "may not have more layers than its teacher"),
    (["--encoder-layers", 3], "may not have more layers than its teacher"),
    (["--d-model", 128], "may not be wider"),
    (["--student", "huge"], "unknown student preset"),
    (["--student", "missing.yaml"], "config file not found"),
    (["--method", "magic"], "unknown method"),
    (["--phase1-steps", 0], "max_steps must be positive"),
])
def test_impossible_requests_fail_early_with_one_line(cli, tiny_teacher_dir, corpus, tmp_path, train_yaml,
                                                      flags, message):
    out = tmp_path / "student"
    code, stdout, stderr = cli("compress", tiny_teacher_dir, *common(corpus, out, train_yaml, tmp_path / "cache"),
                               *flags)
    assert code == 2
    assert stderr.startswith("wdctl: error:") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists() and not Path(f"{out}.run").exists() and not (tmp_path / "cache").exists()


def test_not_a_teacher_and_missing_data(cli, tmp_path, tiny_teacher_dir, train_yaml):
    code, _, stderr = cli("compress", tmp_path / "nope", "--data", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "model directory not found" in stderr
    code, _, stderr = cli("compress", tiny_teacher_dir, "--out", tmp_path / "o", "--no-export")
    assert code == 2 and "--data and --out are required" in stderr
    code, _, stderr = cli("compress", tiny_teacher_dir, "--data", tmp_path / "none.tsv", "--out", tmp_path / "o",
                          "--no-export")
    assert code == 2 and "file not found" in stderr and not (tmp_path / "o").exists()


def test_memory_guard_refuses_with_the_estimate(cli, tiny_teacher_dir, corpus, tmp_path, train_yaml, monkeypatch):
    monkeypatch.setattr("wdctl.recipes.compress.available_bytes", lambda: 1000)
    out = tmp_path / "student"
    code, _, stderr = cli("compress", tiny_teacher_dir, *common(corpus, out, train_yaml, tmp_path / "cache"))
    assert code == 2 and "phase 1 needs about" in stderr and "available" in stderr
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_ctrl_c_then_rerun_resumes_and_matches_an_uninterrupted_run(cli, tiny_teacher_dir, corpus, tmp_path,
                                                                     train_yaml, monkeypatch):
    import wdctl.passes.phases as pipeline

    cache = tmp_path / "cache"
    code, _, stderr = cli("compress", tiny_teacher_dir, *common(corpus, tmp_path / "a", train_yaml, cache),
                          "--method", "kd")
    assert code == 0, stderr

    # Ctrl-C arrives during step 3 (the evaluation hook runs after each step when eval_every=1).
    def interrupting(job, to_marian):
        return lambda model: (os.kill(os.getpid(), signal.SIGINT), {})[1]

    train_yaml.write_text(train_yaml.read_text().replace("eval_every: 1000", "eval_every: 3"))
    args = common(corpus, tmp_path / "b", train_yaml, cache) + ["--method", "kd"]
    monkeypatch.setattr(pipeline, "_dev_evaluator", interrupting)
    code, _, stderr = cli("compress", tiny_teacher_dir, *args)
    assert code == 130 and "Run the same command again to resume" in stderr
    assert not (tmp_path / "b").exists()
    assert (tmp_path / "b.run" / "train" / "checkpoints" / "step-00000004").is_dir()

    monkeypatch.undo()
    code, stdout, stderr = cli("compress", tiny_teacher_dir, *args)
    assert code == 0, stderr
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)

    # Different settings in the same run directory: refused, or started over with --force.
    code, _, stderr = cli("compress", tiny_teacher_dir, *args, "--force", "--seed", 7, "--run-dir", tmp_path / "b.run")
    assert code == 0, stderr  # --force: the run dir is started over
    metrics = json.loads((tmp_path / "b.run" / "metrics.json").read_text())
    assert metrics["phases"]["train"]["steps"] == 10 and not metrics["phases"]["train"].get("skipped")
    code, _, stderr = cli("compress", tiny_teacher_dir, *common(corpus, tmp_path / "c", train_yaml, cache),
                          "--method", "kd", "--run-dir", tmp_path / "b.run")
    assert code == 2 and "different settings (phase1, phase2)" in stderr
