"""Distilled data (cache, resume) and the end-to-end `compress` pipeline on a tiny teacher:
wd, kd and cut-kd on a few hundred pairs, in well under a minute each."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, MarianMTModel

from wdctl.core.corpus import read_parallel
from wdctl.passes import distill as distill_module
from wdctl.passes.distill import distill, distilled_pairs
from wdctl.passes.training import TrainConfig

from conftest import write_tsv

PHASE1 = TrainConfig(max_steps=16, max_tokens=1024, lr=3e-3, warmup=4, log_every=4, save_every=8,
                     eval_every=1000, threads=1)
PHASE2 = TrainConfig(max_steps=8, max_tokens=1024, lr=2e-3, warmup=4, log_every=4, save_every=8,
                     eval_every=1000, threads=1)
METHODS = ("wd", "kd", "cut-kd")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, tiny_corpus) -> Path:
    """200 training pairs, 20 dev, 20 test: enough to see learning, cheap to distill."""
    root = tmp_path_factory.mktemp("small_corpus")
    for split, n in (("train", 200), ("dev", 20), ("test", 20)):
        write_tsv(root / f"{split}.en-es.tsv", read_parallel(tiny_corpus, split)[:n])
    return root


class CountingTranslate:
    """Wraps translate_torch to count the sentences the teacher actually translates."""

    def __init__(self, real, fail_after_calls: int | None = None):
        self.real, self.sentences, self.calls, self.fail_after_calls = real, 0, 0, fail_after_calls

    def __call__(self, model, tokenizer, sentences, **kwargs):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls += 1
        self.sentences += len(sentences)
        return self.real(model, tokenizer, sentences, **kwargs)


def test_distilled_pairs_are_cached_and_reused(tmp_path, tiny_teacher_dir, tiny_corpus, monkeypatch):
    pairs = read_parallel(tiny_corpus, "train")[:30]
    counter = CountingTranslate(distill_module.translate_torch)
    monkeypatch.setattr(distill_module, "translate_torch", counter)

    first = distill(tiny_teacher_dir, pairs, tmp_path, beams=2, batch_size=8, progress=False)
    assert counter.sentences == 30 and not first.reused and first.translated == 30
    assert {s for s, _ in first.pairs} <= {s for s, _ in pairs}
    assert all(h.strip() for _, h in first.pairs)
    assert first.path.is_file() and first.path.with_suffix(".json").is_file()
    assert not list(tmp_path.glob("*.parts"))  # chunks joined and removed
    mtime = first.path.stat().st_mtime_ns

    again = distilled_pairs(tiny_teacher_dir, pairs, tmp_path, beams=2, batch_size=8, progress=False)
    assert counter.sentences == 30  # nothing retranslated
    assert again == first.pairs and first.path.stat().st_mtime_ns == mtime

    # Another decoding setting or other data is another cache entry.
    other = distill(tiny_teacher_dir, pairs, tmp_path, beams=1, progress=False)
    assert other.path != first.path and counter.sentences == 60
    distill(tiny_teacher_dir, pairs[:10], tmp_path, beams=2, progress=False)
    assert counter.sentences == 70


def test_a_shortlist_written_into_the_teacher_keeps_its_distillation_caches(tmp_path, tiny_teacher_dir):
    """`wdctl shortlist` writes into a teacher's directory; its translations (full vocabulary) do
    not change, so neither does the fingerprint that keys their caches. Its weights do."""
    import shutil

    from wdctl.passes.distill import teacher_fingerprint

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_teacher_dir, teacher)
    before = teacher_fingerprint(teacher)
    (teacher / "shortlist.json").write_text("{}")
    (teacher / "vmap.txt").write_text("a b\n")
    assert teacher_fingerprint(teacher) == before
    (teacher / "model.safetensors").write_bytes((teacher / "model.safetensors").read_bytes() + b" ")
    assert teacher_fingerprint(teacher) != before


def test_interrupted_distillation_resumes_after_the_finished_chunks(tmp_path, tiny_teacher_dir, tiny_corpus,
                                                                    monkeypatch):
    pairs = read_parallel(tiny_corpus, "train")[:25]
    counter = CountingTranslate(distill_module.translate_torch, fail_after_calls=2)
    monkeypatch.setattr(distill_module, "translate_torch", counter)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_teacher_dir, pairs, tmp_path, beams=1, chunk_size=10, progress=False)
    assert counter.sentences == 20 and len(list(tmp_path.glob("*.parts/chunk-*.txt"))) == 2

    counter.fail_after_calls = None
    result = distill(tiny_teacher_dir, pairs, tmp_path, beams=1, chunk_size=10, progress=False)
    assert counter.sentences == 25 and result.translated == 5  # only the last chunk
    reference = distill(tiny_teacher_dir, pairs, tmp_path / "fresh", beams=1, chunk_size=100, progress=False)
    assert result.pairs == reference.pairs


# --- end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_teacher_dir, small_corpus):
    """wd, kd and cut-kd compressed from the tiny teacher (export off), with timings."""
    from wdctl.recipes.compress import compress_with as compress

    root = tmp_path_factory.mktemp("compress")
    results = {}
    for method in METHODS:
        started, cpu = time.perf_counter(), time.process_time()
        metrics = compress(tiny_teacher_dir, str(small_corpus), root / method, student="halved", method=method,
                           phase1=PHASE1, phase2=PHASE2, export=False, cache_dir=root / "cache",
                           eval_sentences=5, threads=1, progress=False)
        results[method] = {"out": root / method, "metrics": metrics, "seconds": time.perf_counter() - started,
                           "cpu_seconds": time.process_time() - cpu}
    return results


def test_three_methods_run_quickly_and_write_standard_marian_dirs(runs):
    # CPU time, not wall time: the 2-core test machines are shared with long training jobs.
    cpu = sum(r["cpu_seconds"] for r in runs.values())
    assert cpu < 180, {m: (round(r["cpu_seconds"], 1), round(r["seconds"], 1)) for m, r in runs.items()}
    for method, r in runs.items():
        out = r["out"]
        model = MarianMTModel.from_pretrained(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert model.config.d_model == 32 and model.config.decoder_layers == 1, method
        assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()
        pad = model.config.pad_token_id
        assert float(model.get_input_embeddings().weight[pad].detach().abs().sum()) == 0.0, method
        batch = tokenizer(["In the beginning."], return_tensors="pt")
        assert model.generate(**batch, max_length=8).shape[0] == 1
        metrics = json.loads((out.with_name(out.name + ".run") / "metrics.json").read_text())
        assert {"test_bleu_beam1", "test_bleu_beam4", "bleu_signature"} <= set(metrics)
        for info in metrics["phases"].values():
            assert info["wall_seconds"] > 0 and info["peak_rss_mb"] > 0 and info["train_seconds"] > 0
        config = json.loads((out.with_name(out.name + ".run") / "config.json").read_text())
        assert config["method"] == method and "torch" in config["versions"]


def test_equal_step_budgets(runs):
    wd = runs["wd"]["metrics"]["phases"]
    assert list(wd) == ["phase1", "phase2"]
    assert wd["phase1"]["steps"] + wd["phase2"]["steps"] == PHASE1.max_steps + PHASE2.max_steps
    for method in ("kd", "cut-kd"):
        phases = runs[method]["metrics"]["phases"]
        assert list(phases) == ["train"] and phases["train"]["steps"] == PHASE1.max_steps + PHASE2.max_steps


def test_phase1_lowers_the_loss_of_the_generated_student(runs):
    phase1 = runs["wd"]["metrics"]["phases"]["phase1"]
    assert phase1["probe_loss_after"] < phase1["probe_loss_before"] - 0.3
    losses = [h["loss"] for h in phase1["history"] if "loss" in h]
    assert losses[-1] < losses[0]
    assert phase1["trainable_parameters"] == runs["wd"]["metrics"]["generator_parameters"]


def test_materialized_student_equals_the_generator_output(runs, tiny_teacher_dir):
    from wdctl.passes.generator import GeneratedStudent, ParameterGenerator
    from wdctl.passes.grouping import GroupPlan
    from wdctl.passes.marian import load_marian
    from wdctl.passes.training import checkpoint_dirs, load_trainable

    run_dir = runs["wd"]["out"].with_name("wd.run")
    student = MarianMTModel.from_pretrained(run_dir / "phase1" / "student")
    teacher, _ = load_marian(tiny_teacher_dir, with_tokenizer=False)
    plan = GroupPlan.build(teacher.config, student.config)
    generated = GeneratedStudent(ParameterGenerator(teacher.state_dict(), plan, seed=PHASE1.seed))
    load_trainable(generated, checkpoint_dirs(run_dir / "phase1")[-1])
    with torch.no_grad():
        state = generated.eval().generator()
    for key, value in student.state_dict().items():
        assert torch.equal(value, state[key]), key
    # Phase 2 moved the student away from its generated start.
    final = load_file(str(runs["wd"]["out"] / "model.safetensors"))
    assert not torch.equal(final["model.decoder.layers.0.fc1.weight"], state["model.decoder.layers.0.fc1.weight"])


def test_cut_kd_starts_from_the_teacher_and_kd_from_random(runs):
    cut = runs["cut-kd"]["metrics"]["phases"]["train"]
    kd = runs["kd"]["metrics"]["phases"]["train"]
    assert cut["probe_loss_before"] < kd["probe_loss_before"]


def test_distilled_data_is_shared_and_reused_across_runs(runs):
    first, *others = (runs[m]["metrics"]["distill"] for m in METHODS)
    assert not first["reused"] and first["translated"] == 200
    for info in others:
        assert info["reused"] and info["translated"] == 0 and info["cache"] == first["cache"]
    assert runs["wd"]["metrics"]["training_pairs"]["union"] > 200


def test_rerun_skips_finished_phases_and_reuses_the_cache(runs, tiny_teacher_dir, small_corpus, monkeypatch):
    from wdctl.recipes.compress import compress_with as compress

    out = runs["wd"]["out"]
    cache = Path(runs["wd"]["metrics"]["distill"]["cache"])
    mtime = cache.stat().st_mtime_ns
    before = load_file(str(out / "model.safetensors"))
    counter = CountingTranslate(distill_module.translate_torch)
    monkeypatch.setattr(distill_module, "translate_torch", counter)
    metrics = compress(tiny_teacher_dir, str(small_corpus), out, student="halved", method="wd", phase1=PHASE1,
                       phase2=PHASE2, export=False, cache_dir=cache.parent, eval_sentences=5, threads=1,
                       force=True, progress=False)
    assert counter.sentences == 0 and cache.stat().st_mtime_ns == mtime
    assert all(info.get("skipped") for info in metrics["phases"].values())
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_student_trains_on_the_original_pairs_and_the_teachers_each_once(tmp_path):
    from wdctl.passes.distill import DistillResult

    result = DistillResult(pairs=[("a", "x'"), ("b", "y")], path=tmp_path, reused=True, translated=0, seconds=0.0,
                           backend="torch")
    assert result.training_pairs([("a", "x"), ("b", "y")]) == [("a", "x"), ("b", "y"), ("a", "x'")]
