"""`wdctl bench` and `wdctl demo`: a quick bench on a tiny teacher and a cut student exported in
the test, its report checked against a JSON schema and its BLEU against sacrebleu on the saved
hypotheses; bad input (--device cuda without a GPU included); failed measurements; the
report and plot on their own."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import sacrebleu

from wdctl.core.corpus import read_parallel
from wdctl.core.errors import InputError

SCHEMA = json.loads((Path(__file__).parent / "report_schema.json").read_text(encoding="utf-8"))
# both tiny models have a shortlist (teacher train and compress write one): its rows too
ALL_BACKENDS = ["torch", "ort-optimum", "ort-graph", "ort-graph-int8", "ort-graph-int8-sl", "ct2", "ct2-vmap"]


def validate(report: dict) -> None:
    jsonschema.validate(report, SCHEMA, cls=jsonschema.Draft202012Validator)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def tiny_student_dir(tmp_path_factory, tiny_teacher_dir) -> Path:
    """A `tiny`-shaped student cut from the tiny teacher (no training: the bench does not care)."""
    from wdctl.passes.cutoff import cut_teacher
    from wdctl.passes.marian import generation_config, load_marian, save_marian
    from wdctl.passes.student import resolve_student, student_config

    teacher, tokenizer = load_marian(tiny_teacher_dir)
    config = student_config(teacher.config, resolve_student("halved", teacher.config))
    student = cut_teacher(teacher.state_dict(), teacher.config, config)
    student.generation_config = generation_config(student.config)
    out = tmp_path_factory.mktemp("student") / "wd-tiny"
    save_marian(student, tokenizer, out)
    shutil.copy(tiny_teacher_dir / "shortlist.json", out)  # the same vocabulary (compress writes its own)
    return out


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory, tiny_teacher_dir, tiny_student_dir, tiny_corpus):
    """`wdctl bench --quick` over every backend, run once for the module."""
    from wdctl.cli import main

    out = tmp_path_factory.mktemp("bench") / "report"
    code = main(["bench", "--teacher", str(tiny_teacher_dir), "--student", str(tiny_student_dir),
                 "--data", str(tiny_corpus), "--quick", "--out", str(out)])
    return code, out


def test_quick_bench_writes_a_report_that_matches_the_schema(quick_bench):
    code, out = quick_bench
    assert code == 0
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    validate(report)
    assert [s["role"] for s in report["systems"]] == ["teacher", "student"]
    assert report["systems"][1]["parameters"] < report["systems"][0]["parameters"]
    s = report["settings"]
    assert (s["beams"], s["batch_sizes"], s["repeats"], s["sentences"], s["quick"]) == ([1], [1], 1, 16, True)
    assert (s["device"], s["skipped_backends"], "gpu" in report["machine"]) == ("cpu", [], False)
    backends = [b for b in ALL_BACKENDS if "ctranslate2" in report["versions"] or not b.startswith("ct2")]
    rows = report["rows"]
    assert [(r["system"], r["backend"]) for r in rows] == [(sys, b) for sys in ("teacher", "wd-tiny") for b in backends]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    for r in rows:
        assert r["latency_ms"]["count"] == 16  # batch 1: one latency per sentence and pass
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p90"]
        assert r["sentences_per_s"]["median"] == pytest.approx(16 / r["seconds"]["median"], rel=0.01)
        assert r["size_mb"] > 0 and r["peak_rss_mb"] > 0
        if r["role"] == "teacher":
            assert r["speedup_vs_teacher_same_backend"] == 1.0
    assert report["machine"]["model"] and report["versions"]["onnxruntime"]
    assert report["command"].startswith("wdctl bench --teacher")


def test_each_rows_bleu_is_sacrebleu_on_its_saved_hypotheses(quick_bench, tiny_corpus):
    _, out = quick_bench
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    references = [t for _, t in read_parallel(tiny_corpus, "test")[:16]]
    assert lines(out / report["data"]["references"]) == references
    for r in report["rows"]:
        hyps = lines(out / r["hypotheses"])
        assert len(hyps) == 16
        assert r["bleu"] == round(sacrebleu.corpus_bleu(hyps, [references]).score, 2), r["id"]
        assert r["chrf"] == round(sacrebleu.corpus_chrf(hyps, [references]).score, 2), r["id"]
        assert r["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_target_tokens_are_counted_with_the_models_tokenizer(quick_bench, tiny_teacher_dir):
    from transformers import AutoTokenizer

    _, out = quick_bench
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    row = next(r for r in report["rows"] if r["id"].startswith("teacher.torch."))
    hyps = lines(out / row["hypotheses"])
    assert row["target_tokens"] == sum(len(tokenizer(text_target=h, add_special_tokens=False)["input_ids"]) for h in hyps)


def test_fp32_backends_agree_with_pytorch(quick_bench):
    """PyTorch, the in-graph translator and optimum's generate decode the same tokens in fp32."""
    _, out = quick_bench
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for system in ("teacher", "wd-tiny"):
        by_backend = {r["backend"]: lines(out / r["hypotheses"]) for r in report["rows"] if r["system"] == system}
        assert by_backend["ort-optimum"] == by_backend["torch"], system
        assert by_backend["ort-graph"] == by_backend["torch"], system


def test_report_md_plot_and_packages_exist(quick_bench):
    _, out = quick_bench
    md = (out / "report.md").read_text(encoding="utf-8")
    for text in ("# wdctl bench report", "## Settings", "## Machine and versions", "### greedy (beam 1), batch 1",
                 "| system | backend | BLEU | chrF |", "ORT fp32 (optimum generate)",
                 "ORT fp32 (in-graph search)", "ORT int8 (in-graph search)", "p50 ms", "bleu_vs_speed.png",
                 "| device | cpu |",
                 "nrefs:1"):
        assert text in md, text
    assert (out / "bleu_vs_speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for system in report["systems"]:
        for kind, path in system["packages"].items():
            assert (out / path).is_dir(), (kind, path)
    assert (out / ".wdctl").is_file() and not list(out.parent.glob(".report.tmp-*"))


def test_rerun_with_force_reuses_the_exported_packages(quick_bench, tiny_teacher_dir, tiny_student_dir,
                                                        tiny_corpus, cli):
    _, out = quick_bench
    code, _, err = cli("bench", "--teacher", tiny_teacher_dir, "--student", tiny_student_dir, "--data", tiny_corpus,
                       "--quick", "--backends", "ort-graph-int8", "--max-sentences", 4, "--out", out, "--force")
    assert code == 0, err
    assert "teacher: reusing the int8 package" in err and "wd-tiny: reusing the fp32 package" in err
    assert "building" not in err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    validate(report)
    assert [r["backend"] for r in report["rows"]] == ["ort-graph-int8", "ort-graph-int8"]


def test_existing_output_without_force_is_refused(quick_bench, tiny_teacher_dir, tiny_corpus, cli):
    _, out = quick_bench
    code, _, err = cli("bench", "--teacher", tiny_teacher_dir, "--student", tiny_teacher_dir, "--data", tiny_corpus,
                       "--quick", "--out", out)
    assert code == 2 and "pass --force" in err


@pytest.fixture
def no_gpu(monkeypatch):
    """onnxruntime and torch without CUDA, as on a CPU-only machine, whatever this one has."""
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("args, message", [
    (["--teacher", "{missing}"], "model directory not found"),
    (["--beams", "1,x"], "--beams: expected comma-separated positive integers, got '1,x'"),
    (["--beams", "0"], "--beams: expected comma-separated positive integers"),
    (["--batch-sizes", "-1"], "--batch-sizes: expected"),
    (["--threads", "two"], "--threads: expected"),
    (["--backends", "torch,tensorrt"], "--backends: unknown backend(s) tensorrt"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--data", "{missing}"], "file not found"),
    (["--student", "{corpus}"], "not a model directory (no config.json)"),
    (["--device", "tpu"], "--device: unknown device 'tpu' (choose from cpu, cuda)"),
    (["--backends", "torch,ort-int8"], "--backends: unknown backend(s) ort-int8 (choose from torch, ort-optimum, "
                                       "ort-graph, ort-graph-int8, ort-graph-int8-sl, ct2, ct2-vmap)"),
    (["--backends", "ort"], "--backends: unknown backend(s) ort (choose from torch, ort-optimum,"),
    (["--device", "cuda", "--backends", "torch,ort-graph-int8"],
     "--backends ort-graph-int8: the in-graph translator runs on CPU only; leave it out with --device cuda"),
    (["--device", "cuda"], "--device cuda: onnxruntime-gpu not installed: pip install 'wdctl[gpu]'"),
    (["--device", "cuda", "--backends", "torch"], "--device cuda: PyTorch cannot use CUDA ("),
])
def test_bad_input_exits_2_with_one_line(cli, tiny_teacher_dir, tiny_corpus, tmp_path, args, message):
    values = {"--teacher": str(tiny_teacher_dir), "--student": str(tiny_teacher_dir), "--data": str(tiny_corpus),
              "--out": str(tmp_path / "out")}
    extra = []
    for flag, value in zip(args[::2], args[1::2]):
        value = value.format(missing=tmp_path / "missing", corpus=tiny_corpus)
        if flag in values:
            values[flag] = value
        else:
            extra += [flag, value]
    argv = ["bench", *[x for pair in values.items() for x in pair], "--quick", *extra]
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert err.startswith("wdctl: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_failed_measurements_are_reported_and_exit_1(cli, tiny_teacher_dir, tiny_corpus, tmp_path, monkeypatch):
    """A worker that fails leaves a failed row in a written report; the command exits 1."""
    import wdctl.bench.run as bench

    references = [t for _, t in read_parallel(tiny_corpus, "test")[:4]]

    def fake_worker(m, settings, sources, work, hyp_path, log_path):
        log_path.write_text("log\n")
        if m.system.role == "student":
            return {"error": "RuntimeError: boom"}
        hyp_path.write_text("".join(r + "\n" for r in references), encoding="utf-8")
        return {"seconds": [0.5, 0.4, 0.6], "latencies_ms": [10.0, 20.0, 30.0, 40.0] * 3, "target_tokens": 100,
                "peak_rss_mb": 300.0, "load_seconds": 1.0, "stable": True}

    monkeypatch.setattr(bench, "run_worker", fake_worker)
    out = tmp_path / "out"
    code, _, err = cli("bench", "--teacher", tiny_teacher_dir, "--student", tiny_teacher_dir, "--data", tiny_corpus,
                       "--backends", "torch", "--beams", "1", "--batch-sizes", "1", "--max-sentences", 4, "--out", out)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("wdctl: error: 1 of 2 measurement(s) failed") and "boom" in last
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    validate(report)
    teacher, student = report["rows"]
    assert teacher["status"] == "ok" and teacher["bleu"] == 100.0
    assert teacher["seconds"]["median"] == 0.5 and teacher["sentences_per_s"] == {"median": 8.0, "min": 6.67, "max": 10.0}
    assert teacher["latency_ms"]["p50"] == 25.0 and teacher["latency_ms"]["p90"] == 40.0
    assert student["status"] == "failed" and student["error"] == "RuntimeError: boom" and student["bleu"] is None
    assert "failed: RuntimeError: boom" in (out / "report.md").read_text(encoding="utf-8")


def test_graph_backends_bench_translator_only_packages(tiny_teacher_dir, tiny_corpus, tmp_path, cli):
    """Without ort-optimum the bench exports no optimum files (translator.onnx + config +
    tokenizer) and the in-graph backends run on them; asking for ort-optimum later rebuilds the
    fp32 package with optimum's encoder and decoder."""
    import wdctl.bench.packages as packages
    from wdctl.export.package import OnnxPackage

    out, cache = tmp_path / "report", tmp_path / "packages"
    code, _, err = cli("bench", "--teacher", tiny_teacher_dir, "--student", tiny_teacher_dir, "--data", tiny_corpus,
                       "--quick", "--backends", "ort-graph,ort-graph-int8", "--max-sentences", 3,
                       "--packages", cache, "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    validate(report)
    assert {r["backend"] for r in report["rows"]} == {"ort-graph", "ort-graph-int8"}
    for kind in ("fp32", "int8"):
        pkg = cache / f"teacher-{kind}"
        assert sorted(p.name for p in pkg.glob("*.onnx")) == ["translator.onnx"], kind
    logs: list[str] = []
    systems = packages.make_systems(tiny_teacher_dir, [])
    packages.prepare_packages(systems, ("ort-optimum",), cache, log=logs.append)
    assert logs == ["teacher: building the fp32 package teacher-fp32"]
    assert OnnxPackage(cache / "teacher-fp32").has_optimum()
    logs.clear()
    packages.prepare_packages(systems, ("ort-optimum", "ort-graph"), cache, log=logs.append)
    assert logs == ["teacher: reusing the fp32 package teacher-fp32"]


def test_packages_cached_before_calibrated_int8_are_rebuilt(tiny_teacher_dir, tmp_path):
    """A cached package whose translator lacks the calibrated activation ranges (fp32) or scales
    (int8), as every package built before them, is built again rather than measured."""
    import onnx

    import wdctl.bench.packages as packages
    from wdctl.export.calibration import METADATA_KEY

    cache = tmp_path / "packages"
    systems = packages.make_systems(tiny_teacher_dir, [])
    packages.prepare_packages(systems, ("ort-graph-int8",), cache, log=lambda _: None)
    for kind in ("fp32", "int8"):
        assert packages._package_ready(cache / f"teacher-{kind}", kind)
    path = cache / "teacher-fp32" / "translator.onnx"
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    logs: list[str] = []
    packages.prepare_packages(systems, ("ort-graph-int8",), cache, log=logs.append)
    assert logs == ["teacher: building the fp32 package teacher-fp32", "teacher: reusing the int8 package teacher-int8"]
    assert packages._package_ready(cache / "teacher-fp32", "fp32")


def test_shortlisted_packages_cached_before_the_left_out_mass_are_rebuilt(tiny_teacher_dir, tmp_path):
    """A cached shortlisted translator that renormalizes over its shortlist (no
    `wdctl.shortlist_mass`, as every one built before the rest slot) is built again."""
    import onnx

    import wdctl.bench.packages as packages

    cache = tmp_path / "packages"
    systems = packages.make_systems(tiny_teacher_dir, [])
    packages.prepare_packages(systems, ("ort-graph-int8-sl",), cache, log=lambda _: None)
    path = cache / "teacher-int8-sl" / "translator.onnx"
    assert packages._package_ready(path.parent, "int8-sl")
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "wdctl.shortlist_mass"]
    assert len(kept) == len(model.metadata_props) - 1
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    assert not packages._package_ready(path.parent, "int8-sl")


def test_ct2_missing_is_a_note_not_a_failure(tiny_teacher_dir, tmp_path, monkeypatch):
    import wdctl.bench.packages as packages

    monkeypatch.setattr(packages, "ct2_available", lambda: False)
    systems = packages.make_systems(tiny_teacher_dir, [tiny_teacher_dir])
    notes = packages.prepare_packages(systems, ("torch", "ct2"), tmp_path / "packages", log=lambda _: None)
    assert notes == ["ct2: skipped, CTranslate2 is not installed (pip install 'wdctl[ct2]')"]
    assert all(not s.packages for s in systems)
    assert systems[0].name == "teacher" and systems[1].name != "teacher"


def test_settings_defaults_quick_and_command(tiny_teacher_dir, tiny_corpus, tmp_path, monkeypatch):
    import wdctl.bench.settings as bench
    from wdctl.bench.settings import make_settings

    full = make_settings(tiny_teacher_dir, [tiny_teacher_dir], tiny_corpus, tmp_path / "o")
    assert (full.beams, full.batch_sizes, full.threads, full.repeats) == ((1, 4), (1, 32), (1,), 3)
    assert (full.device, full.skipped_backends) == ("cpu", ()) and "--device" not in full.command
    monkeypatch.setattr(bench, "check_device", lambda device, backends: None)  # as if on a GPU machine
    gpu = make_settings(tiny_teacher_dir, [tiny_teacher_dir], tiny_corpus, tmp_path / "o", device="cuda")
    assert gpu.backends == ("torch", "ort-optimum", "ct2", "ct2-vmap")
    assert gpu.skipped_backends == ("ort-graph", "ort-graph-int8", "ort-graph-int8-sl")
    assert "--backends torch,ort-optimum,ct2,ct2-vmap" in gpu.command and "--device cuda" in gpu.command
    quick = make_settings(tiny_teacher_dir, [tiny_teacher_dir], tiny_corpus, tmp_path / "o", quick=True, beams="4,1,4")
    assert (quick.beams, quick.batch_sizes, quick.repeats, quick.max_sentences) == ((4, 1), (1,), 1, 16)
    assert "--beams 4,1 --batch-sizes 1 --threads 1" in quick.command and "--max-sentences 16" in quick.command


def test_worker_spec_carries_the_device(tmp_path, monkeypatch):
    """The parent's settings reach the worker through its spec file (the worker is faked)."""
    import subprocess

    import wdctl.bench.run as bench

    def fake_run(args, **kwargs):
        spec = json.loads(Path(args[-1]).read_text(encoding="utf-8"))
        Path(spec["result"]).write_text(json.dumps({"spec": spec}), encoding="utf-8")
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    settings = bench.BenchSettings(teacher=tmp_path, students=[tmp_path], data="d", out=tmp_path / "o",
                                   device="cuda", repeats=2)
    m = bench.Measurement(bench.System("teacher", "teacher", tmp_path), "torch", 4, 8, 1)
    spec = bench.run_worker(m, settings, tmp_path / "src.txt", tmp_path, tmp_path / "h.txt", tmp_path / "log")["spec"]
    assert (spec["device"], spec["backend"], spec["beams"], spec["batch_size"], spec["repeats"]) == ("cuda", "torch", 4, 8, 2)


def test_percentile_matches_numpy():
    import numpy as np

    from wdctl.bench.run import _percentile

    data = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 50, 90, 100):
        assert _percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
    assert _percentile([4.0], 90) == 4.0 and _percentile([], 50) is None


def test_worker_output_limit_matches_translate_torch():
    from wdctl.bench.worker import output_limit
    from wdctl.passes.translate import output_limit as reference

    assert all(output_limit(n) == reference(n) for n in range(0, 300))


def test_report_renders_groups_by_beam_and_batch(tmp_path):
    """Markdown and plot from a synthetic report with four settings (no measuring)."""
    from wdctl.bench.report import render_markdown, write_report

    def row(system, backend, beams, batch, tps):
        return {"id": f"{system}.{backend}.beam{beams}.bs{batch}.t1", "system": system,
                "role": "teacher" if system == "teacher" else "student", "backend": backend,
                "backend_label": backend, "precision": "fp32", "beams": beams, "batch_size": batch, "threads": 1,
                "status": "ok", "error": None, "bleu": 20.0 + tps / 1000, "chrf": 40.0,
                "sentences_per_s": {"median": tps / 30, "min": tps / 31, "max": tps / 29},
                "tokens_per_s": {"median": tps, "min": tps * 0.9, "max": tps * 1.1},
                "latency_ms": {"p50": 10.0, "p90": 12.0, "mean": 10.5, "count": 30} if batch == 1 else None,
                "peak_rss_mb": 400.0, "size_mb": 12.3, "speedup_vs_teacher_same_backend": 1.0,
                "speedup_vs_teacher_torch": 1.0, "stable": True}

    rows = [row(s, b, beam, bs, 100.0 * (1 + i)) for beam in (1, 4) for bs in (1, 32)
            for i, (s, b) in enumerate((s, b) for s in ("teacher", "wd-tiny") for b in ("torch", "ct2"))]
    report = {"settings": {"beams": [1, 4], "batch_sizes": [1, 32], "threads": [1], "repeats": 3, "warmup": "w",
                           "max_length": 256, "length_penalty": 1.0, "quick": False, "max_sentences": None,
                           "device": "cuda", "skipped_backends": ["ort-graph", "ort-graph-int8"]},
              "data": {"spec": "d", "split": "test", "sentences": 30}, "metrics": {"bleu": "b", "chrf": "c"},
              "machine": {"model": "cpu", "cores": 2, "isa_flags": ["avx2"], "gpu": "NVIDIA H100 80GB HBM3"},
              "versions": {"torch": "2"},
              "systems": [{"name": "teacher", "role": "teacher", "parameters": 10, "model_dir": "t", "packages": {}},
                          {"name": "wd-tiny", "role": "student", "parameters": 5, "model_dir": "s", "packages": {}}],
              "backends": {"torch": "PyTorch fp32", "ct2": "CTranslate2 int8"}, "notes": ["a note"], "rows": rows}
    md = render_markdown(report)
    assert "AMX" not in md  # no row refused it
    rows[0]["amx"] = rows[1]["amx"] = "refused"
    rows[2]["amx"] = "in use"
    assert "- Intel AMX refused in 2 in-graph measurement(s)" in render_markdown(report)
    titles = [line for line in md.splitlines() if line.startswith("### ")]
    assert titles == ["### greedy (beam 1), batch 1", "### greedy (beam 1), batch 32", "### beam 4, batch 1",
                      "### beam 4, batch 32"]
    assert md.count("p50 ms") == 2 and "- a note" in md
    assert "| device | cuda (ort-graph, ort-graph-int8 left out: CPU only) |" in md and "- GPU: NVIDIA H100 80GB HBM3" in md
    write_report(tmp_path, report)
    assert (tmp_path / "bleu_vs_speed.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "report.json").read_text())["files"]["plot"] == "bleu_vs_speed.png"


def test_bench_help_explains_device(cli):
    code, out, _ = cli("bench", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0
    assert "--device" in flat and "pip install 'wdctl[gpu]'" in flat and "ort-int8" not in flat
    assert "(ort-graph, ort-graph-int8: CPU provider only)" in flat and "(with --device cuda: torch, ort-optimum and ct2)" in flat


def test_demo_help_says_where_its_teacher_comes_from(cli):
    code, out, _ = cli("demo", "--help")
    flat = " ".join(out.replace("│", " ").split())
    assert code == 0
    assert "bundled teacher" in flat and "--train-teacher" in flat and "report.md" in flat and "reused" in flat


def test_demo_runs_its_stages_in_order_and_reuses_finished_ones(tmp_path, monkeypatch):
    """Stage orchestration with the training and benchmark stages faked (the real ones are
    covered by their own tests; the whole demo is WDCTL_SLOW_TESTS=1)."""
    import wdctl.demo as demo
    from wdctl.core.atomic import atomic_dir

    calls = []

    def fake_model(name):
        def make(out, *args, **kwargs):
            path = out / ("teacher" if name == "teacher" else "wd-small")
            if demo._finished(path):  # as the real stages do
                return path
            calls.append(name)
            with atomic_dir(path) as tmp:
                (tmp / "config.json").write_text("{}")
                (tmp / "model.safetensors").write_text("")
            return path
        return make

    def fake_bench(out, settings):
        calls.append("bench")
        with atomic_dir(out / "bench", force=True):
            pass
        (out / "report.md").write_text(settings.command)
        return out / "report.md"

    monkeypatch.setattr(demo, "stage_teacher", fake_model("teacher"))
    monkeypatch.setattr(demo, "stage_student", fake_model("student"))
    monkeypatch.setattr(demo, "stage_packages", lambda settings: calls.append("export") or [])
    monkeypatch.setattr(demo, "stage_bench", fake_bench)
    monkeypatch.setattr(demo, "bench_finished", lambda out, settings: False)
    out = tmp_path / "demo"
    messages = []
    report = demo.run_demo(out, plan=demo.SMOKE, log=messages.append)
    assert calls == ["teacher", "student", "export", "bench"]
    assert report == out / "report.md" and "--packages" in report.read_text()
    assert len(read_parallel(out / "data", "train")) == 600
    assert len(read_parallel(out / "data", "test")) == 8
    first = json.loads((out / "demo.json").read_text())["stages"]

    calls.clear()
    messages.clear()
    demo.run_demo(out, plan=demo.SMOKE, log=messages.append)
    assert calls == ["export", "bench"]
    assert "demo: teacher: reusing the finished output" in messages
    stages = json.loads((out / "demo.json").read_text())["stages"]
    assert stages["teacher"] == {**first["teacher"], "reused": True}


def test_demo_starts_from_the_bundled_teacher_by_default(tmp_path, monkeypatch):
    """Without --train-teacher no teacher is trained: the student stage gets examples/teacher,
    and the bench compares it with the student on the student's held-out split."""
    import wdctl.demo as demo

    seen = {}

    def fake_student(out, teacher, data, plan, threads=0):
        seen["teacher"], seen["data"] = teacher, data
        return out / "wd-small"

    def fake_bench(out, settings):
        seen["bench"] = settings
        return out / "report.md"

    monkeypatch.setattr(demo, "stage_teacher", lambda *a, **k: pytest.fail("the default demo trains no teacher"))
    monkeypatch.setattr(demo, "stage_student", fake_student)
    monkeypatch.setattr(demo, "bench_settings", lambda out, teacher, student, plan, threads: {"teacher": teacher})
    monkeypatch.setattr(demo, "stage_packages", lambda settings: [])
    monkeypatch.setattr(demo, "bench_finished", lambda out, settings: False)
    monkeypatch.setattr(demo, "stage_bench", fake_bench)
    messages = []
    plan = replace(demo.DEMO, train_pairs=50, held_out=20)
    demo.run_demo(tmp_path / "demo", plan=plan, log=messages.append)
    assert seen["teacher"] == demo.BUNDLED_TEACHER and seen["bench"] == {"teacher": demo.BUNDLED_TEACHER}
    assert len(read_parallel(seen["data"], "train")) == 50 and len(read_parallel(seen["data"], "test")) == 20
    assert not (tmp_path / "demo" / "teacher").exists()  # no teacher trained
    assert any("the bundled teacher" in m for m in messages)


def test_demo_phase2_steps_sets_the_budget_and_refuses_nonsense(cli, tmp_path, monkeypatch):
    import wdctl.demo as demo

    seen = {}

    def fake_run_demo(out, plan, **kwargs):
        seen["plan"] = plan
        return out / "report.md"

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    code, _, _ = cli("demo", "--phase2-steps", "1800", "--out", tmp_path / "long")
    assert code == 0 and seen["plan"].phase_steps == (demo.DEMO.phase_steps[0], 1800)
    seen.clear()
    code, _, _ = cli("demo", "--out", tmp_path / "default")
    assert code == 0 and seen["plan"].phase_steps == demo.DEMO.phase_steps
    monkeypatch.undo()
    code, _, err = cli("demo", "--phase2-steps", "0", "--out", tmp_path / "zero")
    assert code != 0 and "--phase2-steps must be at least 1 (got 0)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "zero").exists()


def test_demo_reuses_a_finished_student_only_with_the_same_budget(tmp_path):
    """A student finished with 150 + 450 steps (or another phase-2 schedule) is not passed off as
    a 150 + 1800 one."""
    import wdctl.demo as demo
    from wdctl.core.atomic import atomic_dir

    student = tmp_path / "wd-small"
    with atomic_dir(student) as tmp:
        (tmp / "config.json").write_text("{}")
    plan = replace(demo.DEMO, phase_steps=(150, 1800))
    with pytest.raises(InputError, match="no readable run config"):
        demo.stage_student(tmp_path, demo.BUNDLED_TEACHER, tmp_path / "data", plan)
    run = tmp_path / "wd-small.run"
    run.mkdir()
    # a run config from before schedules were an option: inverse-sqrt
    (run / "config.json").write_text(json.dumps({"phase1": {"max_steps": 150}, "phase2": {"max_steps": 450}}))
    with pytest.raises(InputError, match=r"finished with 150 \+ 450 steps \(inverse-sqrt\), not 150 \+ 1800 steps \(inverse-sqrt\)"):
        demo.stage_student(tmp_path, demo.BUNDLED_TEACHER, tmp_path / "data", plan)
    linear = replace(plan, phase_steps=(150, 450), phase2_schedule="linear")
    with pytest.raises(InputError, match=r"\(inverse-sqrt\), not 150 \+ 450 steps \(linear\)"):
        demo.stage_student(tmp_path, demo.BUNDLED_TEACHER, tmp_path / "data", linear)
    assert demo.stage_student(tmp_path, demo.BUNDLED_TEACHER, tmp_path / "data", replace(plan, phase_steps=(150, 450))) == student
    (run / "config.json").write_text(json.dumps({"phase1": {"max_steps": 150},
                                                 "phase2": {"max_steps": 450, "schedule": "linear"}}))
    assert demo.stage_student(tmp_path, demo.BUNDLED_TEACHER, tmp_path / "data", linear) == student


@pytest.mark.skipif(not __import__("os").environ.get("WDCTL_SLOW_TESTS"), reason="set WDCTL_SLOW_TESTS=1 (a few minutes)")
def test_demo_smoke_runs_every_stage_for_real(cli, tmp_path):
    out = tmp_path / "demo"
    code, stdout, err = cli("demo", "--smoke", "--out", out)
    assert code == 0, err
    assert (out / "report.md").is_file() and (out / "bleu_vs_speed.png").is_file()
    report = json.loads((out / "bench" / "report.json").read_text())
    validate(report)
    assert [s["name"] for s in report["systems"]] == ["teacher", "wd-small"]
    code, _, err = cli("demo", "--smoke", "--out", out)
    assert code == 0 and "demo: bench: reusing the finished output" in err


def test_readme_pivot_has_a_row_per_system_and_backend(quick_bench):
    """benchmarks/bench_pivot.py: the README's table, one cell per beam and batch size."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pivot.py"
    spec = importlib.util.spec_from_file_location("bench_pivot", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = json.loads((quick_bench[1] / "report.json").read_text())
    table = module.pivot(report).splitlines()
    pairs = {(r["system"], r["backend"]) for r in report["rows"]}
    assert len(table) == 2 + len(pairs)
    for row in report["rows"]:
        if row["status"] == "ok":
            assert any(f"| {row['system']} | {row['backend_label']} |" in line and f"{row['bleu']:.2f} / " in line
                       for line in table)


def test_workers_without_torch_are_told_so(monkeypatch):
    """Workers of the torch-free backends start without torch (transformers is told USE_TORCH=0);
    the torch-based ones keep it, and every worker gets the thread limits."""
    from wdctl.bench.run import TORCH_FREE_BACKENDS, worker_env

    monkeypatch.delenv("USE_TORCH", raising=False)
    assert TORCH_FREE_BACKENDS == {"ort-graph", "ort-graph-int8", "ort-graph-int8-sl", "ct2", "ct2-vmap"}
    for backend in sorted(TORCH_FREE_BACKENDS):
        env = worker_env(1, backend)
        assert env["USE_TORCH"] == "0" and env["OMP_NUM_THREADS"] == "1"
    for backend in ("torch", "ort-optimum"):
        env = worker_env(2, backend)
        assert "USE_TORCH" not in env and env["OMP_NUM_THREADS"] == "2"
