"""Interruption, atomic outputs, determinism, non-finite losses and safe loading."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.marian import load_marian
from wdctl.passes.phases import claim_run_dir, jsonable, schedule_fingerprint
from wdctl.passes.training import TrainConfig, train


def teacher_cmd(corpus, out, steps=80):
    return [sys.executable, "-m", "wdctl", "teacher", "train", "--data", str(corpus), "--out", str(out),
            "--preset", "tiny", "--max-steps", str(steps), "--vocab-size", "300", "--threads", "1"]


def logged_steps(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return max((json.loads(line)["step"] for line in log.read_text().splitlines()), default=0) if log.exists() else 0


def test_sigint_mid_training_then_rerun_equals_uninterrupted(tmp_path, tiny_corpus):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # slow the run down a little with small batches so the signal lands mid-run
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("max_tokens: 256\nlog_every: 5\nsave_every: 20\n")
    interrupted = tmp_path / "a" / "model"
    proc = subprocess.Popen(teacher_cmd(tiny_corpus, interrupted) + ["--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while logged_steps(interrupted.with_name("model.run")) < 25 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-1000:]
    assert "interrupted at step" in err and "Run the same command again to resume" in err
    assert not interrupted.exists()
    checkpoints = sorted((interrupted.with_name("model.run") / "checkpoints").glob("step-*"))
    assert checkpoints and int(checkpoints[-1].name.split("-")[1]) < 80

    rerun = subprocess.run(teacher_cmd(tiny_corpus, interrupted) + ["--config", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-1000:]
    assert "resuming from" in rerun.stderr

    straight = tmp_path / "b" / "model"
    once = subprocess.run(teacher_cmd(tiny_corpus, straight) + ["--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert once.returncode == 0, once.stderr[-1000:]
    a, b = load_file(str(interrupted / "model.safetensors")), load_file(str(straight / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_existing_output_is_refused_unless_force_and_foreign_dirs_are_never_replaced(tmp_path, tiny_corpus, cli):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("user data")
    code, _, err = cli("teacher", "train", "--data", tiny_corpus, "--out", foreign, "--preset", "tiny", "--max-steps", 2)
    assert code == 2 and "output directory exists" in err
    code, _, err = cli("teacher", "train", "--data", tiny_corpus, "--out", foreign, "--preset", "tiny",
                       "--max-steps", 2, "--force")
    assert code == 2 and "not written by wdctl" in err
    assert (foreign / "notes.txt").read_text() == "user data"


class _Exploding(nn.Module):
    """Gives finite logits for a few steps, then NaN."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(20, 20)
        self.calls = 0

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        self.calls += 1
        logits = self.proj(decoder_input_ids)
        return type("Out", (), {"logits": logits * (float("nan") if self.calls > 4 else 1.0)})


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    examples = [([3, 4, 0], [5, 6, 0])] * 8
    cfg = TrainConfig(max_steps=10, max_tokens=6, warmup=1, save_every=2, log_every=1)
    with pytest.raises(WdctlError, match="non-finite loss at step 5.*step-00000004"):
        train(_Exploding(), examples, cfg, tmp_path, pad_id=19, start_id=19, desc="t")
    kept = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert kept and kept[-1].name == "step-00000004"
    assert all(torch.isfinite(t).all() for t in load_file(str(kept[-1] / "trainable.safetensors")).values())


def test_resume_with_different_settings_is_refused(tmp_path):
    examples = [([3, 4, 0], [5, 6, 0])] * 8
    model = _Exploding()
    train(model, examples, TrainConfig(max_steps=2, max_tokens=6, warmup=1, save_every=1), tmp_path,
          pad_id=19, start_id=19)
    with pytest.raises(InputError, match="lr: 0.0007 -> 0.1"):
        train(_Exploding(), examples, TrainConfig(max_steps=4, max_tokens=6, warmup=1, lr=0.1), tmp_path,
              pad_id=19, start_id=19)


def test_a_run_started_before_a_training_option_existed_resumes_at_its_default(tmp_path):
    """config.json of a run from an older wdctl lacks the options added since (hidden_weight):
    they read as their defaults, so the run resumes; a non-default value is a different run."""
    fingerprint = {"method": "wd", "phase1": schedule_fingerprint(TrainConfig()),
                   "phase2": schedule_fingerprint(TrainConfig(max_steps=500))}
    older = json.loads(json.dumps(fingerprint))
    for phase in ("phase1", "phase2"):
        del older[phase]["hidden_weight"]
    (tmp_path / "config.json").write_text(json.dumps({"fingerprint": older}))
    assert claim_run_dir(tmp_path, jsonable(fingerprint), force=False) is False
    fingerprint["phase2"]["hidden_weight"] = 1.0
    with pytest.raises(InputError, match=r"different settings \(phase2\)"):
        claim_run_dir(tmp_path, jsonable(fingerprint), force=False)


def test_teacher_training_is_deterministic(tmp_path, tiny_corpus, cli):
    outs = []
    for name in ("x", "y"):
        out = tmp_path / name
        code, _, err = cli("teacher", "train", "--data", tiny_corpus, "--out", out, "--preset", "tiny",
                           "--max-steps", 20, "--vocab-size", 300, "--threads", 1)
        assert code == 0, err
        outs.append(load_file(str(out / "model.safetensors")))
    for name in outs[0]:
        assert torch.equal(outs[0][name], outs[1][name]), name


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: None, "model directory not found"),
        (lambda d: d.mkdir(), "no config.json"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text("{not json")), "unreadable model config"),
        (lambda d: (d.mkdir(), (d / "config.json").write_text(json.dumps({"model_type": "bert"}))),
         "model type 'bert' is not supported (supported: marian"),
    ],
)
def test_bad_model_directories(tmp_path, setup, message):
    target = tmp_path / "m"
    setup(target)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        load_marian(target)


def test_pickle_weights_are_refused_and_corrupt_safetensors_reported(tmp_path, tiny_teacher_dir):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_teacher_dir, pickled)
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InputError, match="pytorch_model.bin is a pickle file, which wdctl refuses to load"):
        load_marian(pickled)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_teacher_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match="model.safetensors: cannot load weights"):
        load_marian(corrupt)


def test_translate_accepts_long_empty_and_odd_unicode_lines(tmp_path, tiny_teacher_dir, cli):
    lines = [
        "And God said " * 400,  # far beyond the model's limit: truncated with a warning
        "",
        "Jesus\u200b wept\u200d.",  # zero-width characters
        "ｆｕｌｌｗｉｄｔｈ God ﬁsh ½",  # NFKC-foldable forms
        "שָׁלוֹם and سلام",  # right-to-left text
        "Cafe\u0301 and café",  # decomposed and composed é
        "   ",
    ]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    code, _, err = cli("translate", tiny_teacher_dir, "--input", src, "--output", out, "--beams", 1)
    assert code == 0, err
    assert "1 input line(s) longer than" in err and "were truncated" in err
    hyps = out.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(hyps) == len(lines)
    assert hyps[1] == "" and hyps[6] == ""
    assert all(h.strip() for i, h in enumerate(hyps) if i not in (1, 6))


def test_atomic_dir_keeps_previous_output_when_a_write_fails(tmp_path):
    from wdctl.core.atomic import atomic_dir

    out = tmp_path / "pkg"
    with atomic_dir(out) as tmp:
        (tmp / "model.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "model.txt").write_text("half of v2")
            raise RuntimeError("disk full")
    assert (out / "model.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]


def test_peak_rss_of_a_child_process_is_its_own(tmp_path):
    """A worker started by fork + exec reports its own peak memory, not its launcher's
    (getrusage's ru_maxrss inherits the parent's)."""
    import subprocess
    import sys

    from wdctl.core.runinfo import peak_rss_mb

    ballast = b"\x01" * (400 << 20)  # touched pages: the parent's peak is at least 400 MiB
    child = subprocess.run([sys.executable, "-c", "from wdctl.core.runinfo import peak_rss_mb; print(peak_rss_mb())"],
                           capture_output=True, text=True, check=True)
    assert peak_rss_mb() >= 400
    assert 0 < float(child.stdout) < 200
    del ballast


def test_stop_flag_asked_twice_stops_at_once_unless_patient():
    """A second Ctrl-C stops at once in one process; under torchrun (patient) the launcher's
    forwarded signal must not cut the checkpoint short."""
    import os
    import signal

    import pytest

    from wdctl.passes.training import _StopFlag

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, Python's handler in a terminal
    with _StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    with _StopFlag(patient=True) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) == before


class _Finite(_Exploding):
    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return type("Out", (), {"logits": self.proj(decoder_input_ids)})


@pytest.mark.parametrize("schedule", ["inverse-sqrt", "linear"])
def test_schedules_warm_up_then_decay_and_linear_ends_at_zero(tmp_path, schedule):
    examples = [([3, 4, 0], [5, 6, 0])] * 8
    cfg = TrainConfig(max_steps=10, max_tokens=6, warmup=2, lr=0.01, log_every=1, save_every=100, schedule=schedule)
    result = train(_Finite(), examples, cfg, tmp_path, pad_id=19, start_id=19)
    lrs = [r["lr"] for r in result.history if "lr" in r]
    assert len(lrs) == 10 and max(lrs) == pytest.approx(0.01)
    after_peak = lrs[len(lrs) - 1 - lrs[::-1].index(max(lrs)):]  # from the last step at the peak
    assert all(a > b for a, b in zip(after_peak, after_peak[1:]))
    assert (lrs[-1] == 0.0) == (schedule == "linear")


def test_unknown_schedule_is_refused():
    with pytest.raises(InputError, match="schedule must be one of inverse-sqrt, linear, got 'cosine'"):
        TrainConfig(schedule="cosine").validate()


def test_plateaued_needs_patience_evaluations_without_gain():
    from wdctl.passes.training import plateaued

    assert not plateaued([10, 11, 11.1, 11.1], patience=0, min_gain=0.2)  # off
    assert not plateaued([10, 11, 11.1], patience=3, min_gain=0.2)  # too few to judge
    assert plateaued([10, 11, 11.1, 11.2, 10.9], patience=3, min_gain=0.2)
    assert not plateaued([10, 11, 11.1, 11.3, 10.9], patience=3, min_gain=0.2)


def test_training_stops_at_a_dev_plateau_and_a_rerun_stays_stopped(tmp_path):
    examples = [([3, 4, 0], [5, 6, 0])] * 8
    scores = iter([5.0, 8.0, 8.1, 8.0, 7.9, 99.0])  # gains stop after the second evaluation
    cfg = TrainConfig(max_steps=50, max_tokens=6, warmup=1, save_every=100, eval_every=2, log_every=1,
                      plateau_patience=3, plateau_min_gain=0.2)
    result = train(_Finite(), examples, cfg, tmp_path,
                   pad_id=19, start_id=19, evaluate=lambda m: {"dev_bleu": next(scores)})
    assert result.plateau and result.steps == 10  # evaluations at steps 2..10: 5, 8, 8.1, 8.0, 7.9
    assert sorted((tmp_path / "checkpoints").glob("step-*"))[-1].name == "step-00000010"
    again = train(_Finite(), examples, cfg, tmp_path, pad_id=19, start_id=19,
                  evaluate=lambda m: {"dev_bleu": next(scores)})
    assert again.plateau and again.steps == 10  # resumed from the log: no step, no evaluation


class _Finite(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Embedding(20, 20)

    def forward(self, input_ids, attention_mask, decoder_input_ids):
        return type("Out", (), {"logits": self.proj(decoder_input_ids)})


def test_average_last_keeps_that_many_checkpoints_and_ends_at_their_mean(tmp_path):
    examples = [([3, 4, 0], [5, 6, 0])] * 8
    cfg = TrainConfig(max_steps=12, max_tokens=6, warmup=1, lr=0.05, save_every=2, average_last=3)
    model = _Finite()
    train(model, examples, cfg, tmp_path, pad_id=19, start_id=19)
    kept = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [p.name for p in kept] == ["step-00000008", "step-00000010", "step-00000012"]
    weights = [load_file(str(p / "trainable.safetensors"))["proj.weight"] for p in kept]
    assert not torch.equal(weights[0], weights[-1])  # the mean is not just the last checkpoint
    assert torch.allclose(model.proj.weight, sum(weights) / 3, atol=1e-6)
