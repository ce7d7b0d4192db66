"""`wdctl compress` / `wdctl inspect` on the command line: plans, bad input, the memory guard,
resuming after Ctrl-C, and the run directory's guard against mixing settings."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
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
    flat = " ".join(out.replace("│", " ").split())  # the help's box borders break wrapped lines
    assert code == 0
    assert "half width" in flat and "TINY" in flat and "one d_model" in flat
    for word in ("--method", "cut-kd", "--dry-run", "--phase1-steps", "--kd-weight", "--no-export", "--threads"):
        assert word in flat


def test_version_is_the_installed_package_version(cli):
    from importlib.metadata import version

    code, out, _ = cli("--version")
    assert code == 0 and out == f"wdctl {version('wdctl')}\n"  # pyproject's version, as reports print it


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


def test_inspect_prints_each_phase_estimate_for_the_batch(cli, tiny_teacher_dir):
    """The estimate grows with --max-tokens by at least the loss's vocabulary rows per token
    (logits, log-softmax and both gradients in fp32; the printed GiB have two decimals)."""
    vocab = json.loads((Path(tiny_teacher_dir) / "config.json").read_text())["vocab_size"]
    estimates = {}
    for max_tokens in (1000, 41000):
        # fp32 named: "auto" is bf16 on a CPU with AVX-512 BF16 or AMX
        code, stdout, stderr = cli("inspect", tiny_teacher_dir, "--student", "small", "--max-tokens", max_tokens,
                                   "--precision", "fp32")
        assert code == 0, stderr
        found = dict(re.findall(rf"^(phase-[12]) memory estimate: ([0-9.]+) GiB at --max-tokens {max_tokens}, fp32 ",
                                stdout, re.M))
        assert set(found) == {"phase-1", "phase-2"} and "available memory:" in stdout
        estimates[max_tokens] = {phase: float(gib) * 2**30 for phase, gib in found.items()}
    for phase in ("phase-1", "phase-2"):
        assert estimates[41000][phase] - estimates[1000][phase] > 40000 * 4 * 4 * vocab


def test_inspect_counts_a_loss_that_runs_the_teacher(cli, tiny_teacher_dir):
    """--kd-weight and --hidden-weight run the teacher on every step: each phase's estimate gains
    a "teacher pass" part, the KL term's larger than the states'."""
    totals = {}
    for flags in ([], ["--hidden-weight", 1], ["--kd-weight", 0.5]):
        code, stdout, stderr = cli("inspect", tiny_teacher_dir, "--student", "small", "--max-tokens", 41000,
                                   "--precision", "fp32", *flags)
        assert code == 0, stderr
        assert ("teacher pass" in stdout) == bool(flags)
        totals[tuple(map(str, flags[:1]))] = float(re.search(r"^phase-2 memory estimate: ([0-9.]+) GiB", stdout,
                                                             re.M).group(1))
    assert totals[()] < totals[("--hidden-weight",)] < totals[("--kd-weight",)]


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
    probes = [json.loads((tmp_path / f"{r}.run" / "metrics.json").read_text())["phases"]["train"]["probe_loss_before"]
              for r in "ab"]
    assert probes[0] is not None and probes[0] == probes[1]  # the step-0 probe survives the resumption

    # Different settings in the same run directory: refused, or started over with --force.
    code, _, stderr = cli("compress", tiny_teacher_dir, *args, "--force", "--seed", 7, "--run-dir", tmp_path / "b.run")
    assert code == 0, stderr  # --force: the run dir is started over
    metrics = json.loads((tmp_path / "b.run" / "metrics.json").read_text())
    assert metrics["phases"]["train"]["steps"] == 10 and not metrics["phases"]["train"].get("skipped")
    code, _, stderr = cli("compress", tiny_teacher_dir, *common(corpus, tmp_path / "c", train_yaml, cache),
                          "--method", "kd", "--run-dir", tmp_path / "b.run")
    assert code == 2 and "different settings (phase1, phase2)" in stderr


def test_a_finished_run_rerun_with_a_larger_budget_trains_on_to_where_a_longer_run_ends(
        cli, tiny_teacher_dir, corpus, tmp_path, train_yaml):
    """Inverse-sqrt does not depend on the step budget, so a finished run asked for more steps
    continues its last phase from its last checkpoint (no --force: the outputs are its own) and
    ends with the weights of one run trained that long; fewer steps than it has are refused."""
    cache = tmp_path / "cache"
    longer = common(corpus, tmp_path / "a", train_yaml, cache) + ["--method", "kd", "--phase2-steps", 8]
    code, _, stderr = cli("compress", tiny_teacher_dir, *longer)
    assert code == 0, stderr
    args = common(corpus, tmp_path / "b", train_yaml, cache) + ["--method", "kd"]
    code, _, stderr = cli("compress", tiny_teacher_dir, *args)
    assert code == 0, stderr
    code, stdout, stderr = cli("compress", tiny_teacher_dir, *args, "--phase2-steps", 8)
    assert code == 0, stderr
    assert "finished at step 10; training on to 14" in stdout
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all((a[k] == b[k]).all() for k in a)
    train = json.loads((tmp_path / "b.run" / "metrics.json").read_text())["phases"]["train"]
    assert train["steps"] == 14 and not train.get("skipped")

    config = (tmp_path / "b.run" / "config.json").read_bytes()
    code, _, stderr = cli("compress", tiny_teacher_dir, *args, "--phase2-steps", 2)
    assert code == 2 and "trained 14 steps already, more than the 8 asked now" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert (tmp_path / "b.run" / "config.json").read_bytes() == config  # refused before anything is rewritten

    # a linear decay depends on the budget: another budget is another run
    train_yaml.write_text(train_yaml.read_text() + "schedule: linear\n")
    linear = common(corpus, tmp_path / "c", train_yaml, cache) + ["--method", "kd"]
    code, _, stderr = cli("compress", tiny_teacher_dir, *linear)
    assert code == 0, stderr
    code, _, stderr = cli("compress", tiny_teacher_dir, *linear, "--phase2-steps", 8)
    assert code == 2 and "different settings (phase2)" in stderr


def test_only_the_last_phase_of_wd_trains_on(cli, tiny_teacher_dir, corpus, tmp_path, train_yaml):
    """wd's phase 2 started from phase 1's student, so phase 1 stays as it finished."""
    args = common(corpus, tmp_path / "wd", train_yaml, tmp_path / "cache") + ["--method", "wd"]
    code, _, stderr = cli("compress", tiny_teacher_dir, *args)
    assert code == 0, stderr
    code, stdout, stderr = cli("compress", tiny_teacher_dir, *args, "--phase2-steps", 6)
    assert code == 0, stderr
    phases = json.loads((tmp_path / "wd.run" / "metrics.json").read_text())["phases"]
    assert phases["phase1"]["skipped"] and phases["phase1"]["steps"] == 6
    assert phases["phase2"]["steps"] == 6 and not phases["phase2"].get("skipped")


def test_a_finished_phase_trains_on_only_when_no_stopping_rule_holds(tmp_path):
    from wdctl.passes.phases import _trains_on
    from wdctl.passes.training import TrainConfig

    (tmp_path / "checkpoints" / "step-00000008").mkdir(parents=True)
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s, "dev_bleu": b}) + "\n"
                                                for s, b in ((2, 10.0), (4, 10.1), (6, 10.0), (8, 10.1))))
    finished = {"steps": 8, "train_seconds": 60.0}
    assert _trains_on(tmp_path, finished, TrainConfig(max_steps=9))
    assert not _trains_on(tmp_path, finished, TrainConfig(max_steps=8))
    assert not _trains_on(tmp_path, finished, TrainConfig(max_steps=9, max_minutes=1.0))  # out of time
    assert not _trains_on(tmp_path, finished, TrainConfig(max_steps=9, plateau_patience=3))  # at its plateau
    assert _trains_on(tmp_path, finished, TrainConfig(max_steps=9, plateau_patience=4))


def test_a_phase_counts_the_steps_it_has_trained(tmp_path):
    from wdctl.passes.phases import trained_steps

    assert trained_steps(tmp_path / "train") == 0
    for step in (4, 12):
        (tmp_path / "train" / "checkpoints" / f"step-{step:08d}").mkdir(parents=True)
    assert trained_steps(tmp_path / "train") == 12
    (tmp_path / "train" / "done.json").write_text(json.dumps({"steps": 14}))
    assert trained_steps(tmp_path / "train") == 14


# ----------------------------------------------------------------------------- #12: TINY, generator, start


def test_generator_and_start_flags(cli, tiny_teacher_dir):
    code, stdout, _ = cli("inspect", tiny_teacher_dir, "--student", "tiny")
    assert code == 0
    assert re.search(r"generator sizes: coherent \d+, release \d+", stdout)
    code, stdout, _ = cli("compress", tiny_teacher_dir, "--student", "small", "--generator", "release", "--dry-run")
    assert code == 0 and "generator sizes: coherent" in stdout
    code, _, stderr = cli("compress", tiny_teacher_dir, "--generator", "other", "--dry-run")
    assert code == 2 and "unknown generator 'other'" in stderr
    code, _, stderr = cli("compress", tiny_teacher_dir, "--start", "middle", "--dry-run")
    assert code == 2 and "unknown start 'middle'" in stderr
    code, out, _ = cli("compress", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert "--generator" in flat and "--start" in flat and "importance" in flat


def test_dry_run_reports_generator_sizes(tiny_teacher_dir):
    from wdctl.passes.narrow_marian import count_parameters
    from wdctl.recipes.compress import compress_with

    result = compress_with(tiny_teacher_dir, None, None, student="tiny", dry_run=True)
    assert result["generator"] == "coherent"
    assert set(result["generator_sizes"]) == {"coherent", "release"}
    assert result["generator_sizes"]["coherent"] == result["generator_parameters"]
    assert 0 < result["student_parameters"] < result["teacher_parameters"]
    release = compress_with(tiny_teacher_dir, None, None, student="tiny", dry_run=True, generator="release")
    assert release["generator_parameters"] == result["generator_sizes"]["release"]
    assert count_parameters  # the narrow model's count is the summary's


def test_tiny_student_compresses_exports_and_translates(cli, tiny_teacher_dir, corpus, tmp_path, train_yaml):
    """`--student tiny --method wd`: a wdctl_narrow_marian student that loads with
    AutoModelForSeq2SeqLM after `import wdctl`, exports (validated), quantizes and translates."""
    out = tmp_path / "tiny"
    args = common(corpus, out, train_yaml, tmp_path / "cache")
    args.remove("--no-export")
    code, _, stderr = cli("compress", tiny_teacher_dir, "--student", "tiny", "--method", "wd", *args)
    assert code == 0, stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "wdctl_narrow_marian"
    import wdctl  # noqa: F401 - registers the narrow model
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert type(model).__name__ == "NarrowMarianMTModel"
    assert model.config.decoder_d_model == model.config.d_model // 2
    report = json.loads((Path(f"{out}.onnx") / "export_report.json").read_text())
    assert report["translator"]["passed"]
    assert report["translator"]["calibration_sentences"] == 10  # int8 calibrated on the 10 dev sources
    assert any(Path(f"{out}.int8").glob("*.onnx"))
    src = tmp_path / "src.txt"
    src.write_text("In the beginning God created the heaven and the earth.\nYes.\n", encoding="utf-8")
    for package in (Path(f"{out}.int8"), out):
        code, stdout, stderr = cli("translate", package, "--input", src, "--beams", "2")
        assert code == 0, stderr
        assert len(stdout.splitlines()) == 2
    metrics = json.loads((Path(f"{out}.run") / "metrics.json").read_text())
    assert metrics["generator"] == "coherent" and metrics["phases"]["phase1"]["probe_loss_before"] is not None
    assert "int8_test_bleu_beam4" in metrics["exports"]["int8_scores"]  # re-scored by its in-graph translator


ONE_STEP = ("max_tokens: 1024\nlog_every: 1\nsave_every: 100\neval_every: 1000\n"
            "phase1: {max_steps: 1, warmup: 1}\nphase2: {max_steps: 1, warmup: 1}\n")


@pytest.mark.parametrize("flags, start, refit", [
    ("--start leading --no-refit-output", "leading", False),
    ("--start importance --no-refit-output", "importance", False),
    ("--start block-importance --no-refit-output", "block-importance", False),
    ("", "importance", True),  # compress's default
])
def test_coherent_wd_starts_at_or_below_cut_kd(cli, tiny_teacher_dir, corpus, tmp_path, flags, start, refit):
    """The step-0 probe loss of coherent WD is the cut-off student's (or lower), in `compress` runs;
    with --start importance both record the teacher layer each student layer starts from, and
    wd's plan.json shows the generator started there. With the refit (the default) both start
    from the same refitted top layer."""
    yaml = tmp_path / "one.yaml"
    yaml.write_text(ONE_STEP)
    before, layers = {}, {}
    for method in ("wd", "cut-kd"):
        out = tmp_path / method
        code, _, stderr = cli("compress", tiny_teacher_dir, "--student", "tiny", "--method", method,
                              *flags.split(), *common(corpus, out, yaml, tmp_path / "cache"))
        assert code == 0, stderr
        metrics = json.loads((Path(f"{out}.run") / "metrics.json").read_text())
        assert (metrics["start"], metrics["refit_output"]) == (start, refit)
        phase = metrics["phases"]["phase1" if method == "wd" else "train"]
        before[method] = phase["probe_loss_before"]
        assert before[method] is not None
        layers[method] = metrics.get("start_layers")
    assert before["wd"] <= before["cut-kd"] + 1e-4
    if start == "leading":
        assert layers == {"wd": None, "cut-kd": None}
        return
    plan = json.loads((tmp_path / "wd.run" / "plan.json").read_text())
    assert layers["wd"] == layers["cut-kd"] and set(layers["wd"]) == {"decoder.0"}  # the 2+2 teacher, 1-layer decoder
    starts = {plan["groups"]["decoder"][0][e["select"]] for e in plan["generators"]
              if e["role"].startswith("decoder") and e["student_layer"] == 0}
    assert starts == {layers["wd"]["decoder.0"]}


def test_kd_starts_from_random_weights_whatever_the_default_start(cli, tiny_teacher_dir, corpus, tmp_path):
    """kd takes no start and no refit by default (its runs record 'leading', as they always did,
    so that older kd runs resume), and its own from-scratch schedule (warm-up 1000, clipping) where
    the config names none; asking it to refit is refused in one line."""
    yaml = tmp_path / "one.yaml"
    yaml.write_text(ONE_STEP.replace("warmup: 1", "warmup: null"))
    out = tmp_path / "kd"
    code, _, stderr = cli("compress", tiny_teacher_dir, "--student", "tiny", "--method", "kd",
                          *common(corpus, out, yaml, tmp_path / "cache"))
    assert code == 0, stderr
    metrics = json.loads((Path(f"{out}.run") / "metrics.json").read_text())
    assert (metrics["start"], metrics["refit_output"], metrics.get("start_layers")) == ("leading", False, None)
    schedule = json.loads((Path(f"{out}.run") / "config.json").read_text())["phase1"]
    assert (schedule["warmup"], schedule["clip_norm"], schedule["lr"]) == (1000, 1.0, 7e-4)
    code, _, stderr = cli("compress", tiny_teacher_dir, "--student", "tiny", "--method", "kd", "--refit-output",
                          *common(corpus, tmp_path / "kd2", yaml, tmp_path / "cache"))
    assert code == 2 and "--refit-output" in stderr and len(stderr.strip().splitlines()) == 1


def test_a_resumed_run_reuses_its_start_instead_of_computing_it_again(cli, tiny_teacher_dir, corpus, tmp_path,
                                                                      monkeypatch):
    """The start (importance coordinates and layers, refitted values) is kept in the run directory;
    rerunning the command reads it back (no ranking, no refit) and ends at the same student."""
    yaml = tmp_path / "one.yaml"
    yaml.write_text(ONE_STEP)
    out = tmp_path / "wd"
    args = ("compress", tiny_teacher_dir, "--student", "tiny", *common(corpus, out, yaml, tmp_path / "cache"))
    code, _, stderr = cli(*args)
    assert code == 0, stderr
    run = Path(f"{out}.run")
    first = json.loads((run / "metrics.json").read_text())
    assert (run / "start.safetensors").is_file() and first["start_layers"]
    model, plan = load_file(str(out / "model.safetensors")), (run / "plan.json").read_text()
    shutil.rmtree(out)  # the student again, from the finished phases and the kept start

    def computing(*_, **__):
        raise AssertionError("the start was computed again")

    monkeypatch.setattr("wdctl.recipes.compress.choose_start", computing)
    monkeypatch.setattr("wdctl.recipes.compress.refit_start", computing)
    code, _, stderr = cli(*args)
    assert code == 0, stderr
    again = json.loads((run / "metrics.json").read_text())
    assert again["start_layers"] == first["start_layers"]
    assert (run / "plan.json").read_text() == plan  # rewritten from the start read back
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(model[k], after[k]) for k in model)


def test_a_saved_start_reads_back_as_computed(tmp_path):
    from types import SimpleNamespace

    from wdctl.passes.methods import load_start, save_start

    class Plan:
        def with_start_layers(self, layers):
            return ("moved", dict(layers))

    made = SimpleNamespace(start={"decoder.residual": torch.tensor([3, 1, 2])}, start_layers={("decoder", 0): 2},
                           start_values={"model.decoder.layers.0.fc2.weight": torch.randn(4, 5)}, plan=Plan())
    save_start(made, tmp_path / "start.safetensors")
    read = SimpleNamespace(start=None, start_layers=None, start_values=None, plan=Plan())
    load_start(read, tmp_path / "start.safetensors")
    assert read.start_layers == made.start_layers and read.plan == ("moved", made.start_layers)
    for name in ("start", "start_values"):
        a, b = getattr(made, name), getattr(read, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    leading = SimpleNamespace(start=None, start_layers=None, start_values={"w": torch.ones(2)}, plan=Plan())
    save_start(leading, tmp_path / "leading.safetensors")  # --start leading --refit-output: values only
    read = SimpleNamespace(start=None, start_layers=None, start_values=None, plan=Plan())
    load_start(read, tmp_path / "leading.safetensors")
    assert read.start is None and read.start_layers is None and torch.equal(read.start_values["w"], torch.ones(2))


def test_cut_kd_two_phase_starts_as_cut_kd_and_restarts_the_warmup(cli, tiny_teacher_dir, corpus, tmp_path):
    """cut-kd on wd's schedule: the cut student (cut-kd's step-0 probe) trains phase 1, then phase 2
    from phase 1's student with its learning rate warming up again."""
    yaml = tmp_path / "two.yaml"
    yaml.write_text("max_tokens: 1024\nlog_every: 1\nsave_every: 100\neval_every: 1000\n"
                    "phase1: {max_steps: 3, warmup: 1}\nphase2: {max_steps: 3, warmup: 3}\n")
    probes = {}
    for method in ("cut-kd", "cut-kd-two-phase"):
        out = tmp_path / method
        code, _, stderr = cli("compress", tiny_teacher_dir, "--student", "tiny", "--method", method,
                              *common(corpus, out, yaml, tmp_path / "cache"))
        assert code == 0, stderr
        phases = json.loads((Path(f"{out}.run") / "metrics.json").read_text())["phases"]
        probes[method] = phases["train" if method == "cut-kd" else "phase1"]["probe_loss_before"]
    assert set(phases) == {"phase1", "phase2"} and phases["phase2"]["steps"] == 3
    assert probes["cut-kd-two-phase"] == pytest.approx(probes["cut-kd"], abs=1e-4)
    phase2_lr = [json.loads(line)["lr"] for line in (tmp_path / "cut-kd-two-phase.run" / "phase2" / "log.jsonl")
                 .read_text().splitlines() if "lr" in json.loads(line)]
    assert phase2_lr[0] < max(phase2_lr)  # warming up again


def test_distill_sentences_translates_a_prefix_and_trains_on_every_original(cli, tiny_teacher_dir, corpus, tmp_path,
                                                                            train_yaml):
    """`--distill-sentences N`: the teacher translates the first N sources only; the training
    pairs are every original pair plus those N translations; a bad N is refused up front."""
    out = tmp_path / "student"
    args = common(corpus, out, train_yaml, tmp_path / "cache")
    code, _, stderr = cli("compress", tiny_teacher_dir, "--method", "cut-kd", "--distill-sentences", 7, *args)
    assert code == 0, stderr
    pairs = json.loads((Path(f"{out}.run") / "metrics.json").read_text())["training_pairs"]
    assert pairs["original"] == 120 and pairs["distilled"] == 7 and 120 <= pairs["union"] <= 127
    code, _, stderr = cli("compress", tiny_teacher_dir, "--distill-sentences", -1, *common(corpus, tmp_path / "x",
                                                                                            train_yaml, tmp_path / "c"))
    assert code == 2 and "--distill-sentences" in stderr and not (tmp_path / "x").exists()


def test_the_baselines_train_both_budgets_on_phase_1s_schedule_and_stopping_rule():
    """...and average their final student as phase 2 (the final student of wd) says."""
    from wdctl.passes.methods import baseline_config
    from wdctl.passes.training import TrainConfig

    cfg = baseline_config(TrainConfig(max_steps=300, lr=7e-4, warmup=50),
                          TrainConfig(max_steps=6000, lr=1e-4, warmup=100, plateau_patience=4, average_last=5))
    assert (cfg.max_steps, cfg.lr, cfg.warmup, cfg.plateau_patience, cfg.average_last) == (6300, 7e-4, 50, 0, 5)


def test_only_kd_defaults_to_a_from_scratch_schedule():
    """The methods that start from the teacher keep phase 1's short warm-up and no clipping."""
    from wdctl.config import default_phases

    firsts = {method: default_phases(method)[0] for method in ("wd", "cut-kd", "cut-kd-two-phase", "kd")}
    assert {m: (c.warmup, c.clip_norm) for m, c in firsts.items()} == {
        "wd": (50, 0.0), "cut-kd": (50, 0.0), "cut-kd-two-phase": (50, 0.0), "kd": (1000, 1.0)}
    assert {c.lr for c in firsts.values()} == {7e-4}
