"""`wdctl export`: package layout, validation report, int8/fp16 quantization, clean failures,
and `wdctl translate` over packages and MarianMT directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wdctl.core.errors import InputError, WdctlError


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_teacher_dir):
    """The tiny teacher through the CLI once, with optimum's files: an fp32 package and an int8 package."""
    from wdctl.cli import main

    root = tmp_path_factory.mktemp("export")
    assert main(["export", str(tiny_teacher_dir), "--out", str(root / "fp32"), "--quantize", "none",
                 "--optimum"]) == 0
    assert main(["export", str(tiny_teacher_dir), "--out", str(root / "int8"), "--quantize", "int8",
                 "--beams", "2", "--optimum"]) == 0
    return {"fp32": root / "fp32", "int8": root / "int8", "root": root}


@pytest.fixture(scope="session")
def translator_only(tmp_path_factory, tiny_teacher_dir):
    """The default export (no --optimum): translator.onnx + config + tokenizer, fp32 and int8."""
    from wdctl.cli import main

    root = tmp_path_factory.mktemp("translator-only")
    assert main(["export", str(tiny_teacher_dir), "--out", str(root / "fp32"), "--quantize", "none"]) == 0
    assert main(["export", str(tiny_teacher_dir), "--out", str(root / "int8"), "--beams", "2"]) == 0
    return {"fp32": root / "fp32", "int8": root / "int8"}


def test_default_package_is_the_translator_alone(translator_only, exported, tiny_teacher_dir, bible_pairs,
                                                 tmp_path, cli, capsys):
    from wdctl.commands.export import _summary
    from wdctl.export.package import OnnxPackage

    for mode in ("fp32", "int8"):
        pkg = translator_only[mode]
        assert sorted(p.name for p in pkg.glob("*.onnx")) == ["translator.onnx"], mode
        for name in ("config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "source.spm"):
            assert (pkg / name).is_file(), (mode, name)
        assert OnnxPackage.is_package(pkg) and not OnnxPackage(pkg).has_optimum()
        report = _report(pkg)
        assert "validation" not in report and report["translator"]["passed"] and report["optimum"] is False
        _summary(pkg, report, None if mode == "fp32" else mode)
        assert "(translator.onnx only)" in capsys.readouterr().out
        # a third or less of the package with optimum's files
        size = sum(p.stat().st_size for p in pkg.glob("*.onnx"))
        assert size < 0.5 * sum(p.stat().st_size for p in exported[mode].glob("*.onnx")), mode
    report = _report(translator_only["int8"])
    assert report["quantization"]["files"]["translator.onnx"]["quantized_matmuls"] > 0
    assert report["quality"]["engine"] == "translator.onnx" and report["quality"]["translator"]["beams"] == 2
    src = tmp_path / "in.txt"
    src.write_text("\n".join(s for s, _ in bible_pairs["test"][:5]) + "\n", encoding="utf-8")
    outputs = {}
    for name, model in (("package", translator_only["fp32"]), ("torch", tiny_teacher_dir)):
        code, out, err = cli("translate", model, "--input", src, "--beams", "4")
        assert code == 0, err
        outputs[name] = out
    assert outputs["package"] == outputs["torch"] and len(outputs["package"].splitlines()) == 5
    code, out, err = cli("translate", translator_only["int8"], "--input", src, "--beams", "2")
    assert code == 0 and len(out.splitlines()) == 5, err


def test_translator_only_package_refuses_what_needs_optimum(translator_only, tiny_teacher_dir, tmp_path, cli):
    from wdctl.export.optimum_model import load_optimum
    from wdctl.export.quantize import quantize_package

    with pytest.raises(WdctlError, match="export --optimum"):
        load_optimum(translator_only["fp32"])
    with pytest.raises(InputError, match="export --optimum"):
        quantize_package(translator_only["fp32"], tmp_path / "fp16", mode="fp16")
    report = quantize_package(translator_only["fp32"], tmp_path / "int8", mode="int8")
    assert sorted(report["files"]) == ["translator.onnx"]
    assert sorted(p.name for p in (tmp_path / "int8").glob("*.onnx")) == ["translator.onnx"]
    code, _, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "x", "--quantize", "fp16", "--no-optimum")
    assert code == 2 and "--no-optimum" in err and not (tmp_path / "x").exists()


def _report(path: Path) -> dict:
    return json.loads((path / "export_report.json").read_text())


def _op_types(path: Path) -> set[str]:
    import onnx

    from wdctl.export.quantize import _walk_nodes

    return {n.op_type for n in _walk_nodes(onnx.load(str(path)).graph)}


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}")]


def test_fp32_package_layout_and_report(exported, tiny_teacher_dir):
    pkg = exported["fp32"]
    onnx_files = sorted(p.name for p in pkg.glob("*.onnx"))
    assert onnx_files == ["decoder_model_merged.onnx", "encoder_model.onnx", "translator.onnx"]
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "source.spm"):
        assert (pkg / name).is_file(), name
    report = _report(pkg)
    check = report["validation"]
    assert check["passed"] and check["max_abs_logit_diff"] < 1e-3
    assert check["greedy"]["agreement"] == 1.0 and check["beam4"]["agreement"] == 1.0
    sizes = report["sizes"]
    assert sizes["onnx_total"] == sum(p.stat().st_size for p in pkg.glob("*.onnx") if p.name != "translator.onnx")
    assert sizes["four_file_total"] > sizes["onnx_total"] and sizes["saved_by_merged_decoder"] > 0
    assert sizes["translator"] == (pkg / "translator.onnx").stat().st_size
    assert report["versions"]["onnxruntime"]
    graph = report["translator"]
    assert graph["passed"] and graph["sentences"] == 8 and graph["early_stopping"] is True
    assert graph["greedy"]["agree"] == graph["greedy"]["total"] == 8
    assert graph["beam4"]["agree"] == graph["beam4"]["total"] == 8
    assert "translator.onnx" in report["files"]


def test_int8_package_has_a_weight_only_int8_translator(exported):
    from wdctl.export.translator import OnnxTranslator

    pkg = exported["int8"]
    ops = _op_types(pkg / "translator.onnx")
    # calibrated activation scales (`wdctl.export.calibration`): a row's int8 rounding is its own
    assert "MatMulIntegerToFloat" in ops and "BeamSearch" in ops and "DynamicQuantizeMatMul" not in ops
    assert OnnxTranslator(pkg / "translator.onnx").precision == "int8"
    report = _report(pkg)
    assert report["translator"]["passed"]  # the fp32 translator it came from was validated
    assert report["quantization"]["files"]["translator.onnx"]["quantized_matmuls"] > 0
    graph = report["quality"]["translator"]
    assert graph["beams"] == 2 and 0 <= graph["identical_sentences"] <= 8 and graph["bleu_int8_vs_fp32"] >= 0


def test_translator_disagreeing_with_pytorch_fails_closed(tmp_path, tiny_teacher_dir, cli, monkeypatch):
    from wdctl.export import build

    real = build.validate_translator

    def disagreeing(*args, **kwargs):
        report = real(*args, **kwargs)
        report["beam4"] = {"agree": 7, "total": 8, "agreement": 0.875}
        report["passed"] = False
        return report

    monkeypatch.setattr(build, "validate_translator", disagreeing)
    code, _, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "fp32", "--quantize", "none")
    assert code == 1 and "in-graph translator disagrees with PyTorch (beam4 agrees on 7/8)" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fp32").exists() and not _leftovers(tmp_path, "fp32")


def test_fp32_package_loads_in_optimum_with_defaults(exported, tokenizer_for):
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    model = ORTModelForSeq2SeqLM.from_pretrained(exported["fp32"])
    assert model.use_merged
    tok = tokenizer_for(exported["fp32"])
    out = model.generate(**tok(["In the beginning God created the heaven."], return_tensors="pt"), num_beams=2,
                         max_length=20)
    assert out.shape[0] == 1 and out.shape[1] > 1


@pytest.fixture(scope="session")
def tokenizer_for():
    from transformers import AutoTokenizer

    return lambda path: AutoTokenizer.from_pretrained(path)


def test_int8_package_loads_in_optimum_and_translates(exported, tokenizer_for):
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    pkg = exported["int8"]
    assert sorted(p.name for p in pkg.glob("*.onnx")) == ["decoder_model_merged.onnx", "encoder_model.onnx",
                                                          "translator.onnx"]
    for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
        assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _op_types(pkg / name), name
    model = ORTModelForSeq2SeqLM.from_pretrained(pkg)  # default file names
    tok = tokenizer_for(pkg)
    out = model.generate(**tok(["And God said, Let there be light."], return_tensors="pt"), num_beams=4, max_length=24)
    text = tok.batch_decode(out, skip_special_tokens=True)
    assert len(text) == 1 and text[0].strip()


def test_int8_report_has_sizes_and_rescored_bleu(exported):
    report = _report(exported["int8"])
    q = report["quantization"]
    assert q["mode"] == "int8" and q["isa"] in ("avx512_vnni", "avx512", "avx2", "arm64")
    assert q["sizes"]["total_after"] < q["sizes"]["total_before"]
    assert report["validation"]["passed"]
    quality = report["quality"]
    assert quality["sentences"] >= 4 and "bleu_int8_vs_fp32" in quality and quality["beams"] == 2


def test_summary_counts_every_file_in_mib(exported, capsys):
    """The printed sizes: every file of the package written, and fp32 and int8 totals over the
    same ONNX files (translator.onnx included), in MiB."""
    from wdctl.commands.export import _summary

    def mib(n: int) -> str:
        return f"{n / 2**20:.1f} MiB"

    def onnx_bytes(pkg: Path) -> int:
        return sum(p.stat().st_size for p in pkg.iterdir() if p.suffix == ".onnx" or p.name.endswith(".onnx_data"))

    for mode in (None, "int8"):
        pkg = exported[mode or "fp32"]
        _summary(pkg, _report(pkg), mode)
        out = capsys.readouterr().out
        written = [p for p in pkg.rglob("*") if p.is_file()]
        assert f"package written to {pkg}: {len(written)} files, {mib(sum(p.stat().st_size for p in written))}" in out
        translator = mib((pkg / "translator.onnx").stat().st_size)
        if mode is None:
            assert f"fp32 ONNX: {mib(onnx_bytes(pkg))} (encoder + merged decoder " in out
            assert f"translator.onnx {translator})" in out
        else:
            q = _report(pkg)["sizes_quantized"]
            assert q["total_before"] == onnx_bytes(exported["fp32"])  # the same files as the fp32 package's
            assert f"fp32 ONNX: {mib(onnx_bytes(exported['fp32']))} (" in out
            assert f"int8 ONNX: {mib(onnx_bytes(pkg))} (" in out and f"translator.onnx {translator}), " in out
            assert f"{onnx_bytes(pkg) / onnx_bytes(exported['fp32']):.2f} of fp32" in out
        assert " MB" not in out


def test_int8_with_dev_data_scores_both_against_references(tiny_teacher_dir, tiny_corpus, tmp_path, cli):
    code, out, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "pkg", "--data", tiny_corpus,
                         "--max-sentences", "6", "--beams", "1", "--keep-fp32", "lm_head")
    assert code == 0, err
    report = _report(tmp_path / "pkg")
    quality = report["quality"]
    assert quality["references"] and quality["sentences"] == 6
    assert {"bleu_fp32", "bleu_int8", "chrf_fp32", "chrf_int8"} <= set(quality)
    assert report["translator"]["calibration_sentences"] == 6  # int8's activation ranges: the dev sentences
    assert "package written to" in out and "English sample sentences" not in err


def test_int8_without_data_says_what_it_calibrated_on(tiny_teacher_dir, tmp_path, cli):
    code, _, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "pkg", "--beams", "1")
    assert code == 0, err
    assert "note: int8's activation ranges were measured on the exporter's 8 English sample sentences" in err
    assert _report(tmp_path / "pkg")["translator"]["calibration_sentences"] == 8


def test_quantize_package_keeps_chosen_nodes_fp32(exported, tmp_path):
    import onnx

    from wdctl.export.quantize import _walk_nodes, quantize_package

    report = quantize_package(exported["fp32"], tmp_path / "q", keep_fp32=["lm_head"], isa="avx2")
    assert report["isa"] == "avx2" and report["reduce_range"]
    kept = report["files"]["decoder_model_merged.onnx"]["kept_fp32_nodes"]
    assert kept == ["/lm_head/MatMul"]
    nodes = {n.name: n.op_type for n in _walk_nodes(onnx.load(str(tmp_path / "q" / "decoder_model_merged.onnx")).graph)}
    assert nodes["/lm_head/MatMul"] == "MatMul"
    with pytest.raises(InputError, match="matches no node"):
        quantize_package(exported["fp32"], tmp_path / "q2", keep_fp32=["no_such_node"])
    assert not (tmp_path / "q2").exists()


def test_fp16_package_loads_and_translates(exported, tmp_path):
    """The re-score's translator (optimum's generate) runs an fp16 package, and its translations
    stay close to the fp32 package's."""
    from wdctl.core.metrics import chrf
    from wdctl.export.build import package_translator
    from wdctl.export.onnx_export import SAMPLE_SENTENCES
    from wdctl.export.quantize import quantize_package

    report = quantize_package(exported["fp32"], tmp_path / "fp16", mode="fp16")
    assert report["sizes"]["total_after"] < report["sizes"]["total_before"]
    sources = list(SAMPLE_SENTENCES)
    fp16, fp32 = (package_translator(path)(sources, 2) for path in (tmp_path / "fp16", exported["fp32"]))
    assert len(fp16) == len(sources) and all(fp16)
    assert chrf(fp16, fp32).score > 80


def test_detect_isa():
    from wdctl.export.quantize import detect_isa

    assert detect_isa({"machine": "x86_64", "isa_flags": ["avx2", "avx512f", "avx512_vnni"]}) == "avx512_vnni"
    assert detect_isa({"machine": "x86_64", "isa_flags": ["avx2", "avx512f"]}) == "avx512"
    assert detect_isa({"machine": "x86_64", "isa_flags": ["avx2"]}) == "avx2"
    assert detect_isa({"machine": "aarch64", "isa_flags": []}) == "arm64"


# ----------------------------------------------------------------------------- failures


def _broken_dirs(root: Path, teacher: Path) -> dict[str, tuple[Path, str]]:
    garbage = root / "garbage-config"
    garbage.mkdir()
    (garbage / "config.json").write_text("{ not json")
    bert = root / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    weights = root / "bad-weights"
    shutil.copytree(teacher, weights)
    (weights / "model.safetensors").write_bytes(b"this is not a safetensors file")
    return {
        "corrupt config": (garbage, "config.json"),
        "non-Marian": (bert, "config.json"),
        "corrupt weights": (weights, "model.safetensors"),
        "missing": (root / "nope", "nope"),
    }


def test_bad_model_dirs_fail_cleanly_with_nothing_at_out(tmp_path, tiny_teacher_dir, cli):
    for what, (model_dir, named) in _broken_dirs(tmp_path, tiny_teacher_dir).items():
        for quantize in ("none", "int8"):
            out = tmp_path / f"out-{model_dir.name}-{quantize}"
            code, stdout, err = cli("export", model_dir, "--out", out, "--quantize", quantize)
            assert code == 2, (what, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("wdctl: error: ") and named in lines[0], (what, err)
            assert not out.exists(), what
            assert not _leftovers(tmp_path, out.name), what


def test_validation_failure_exits_1_and_leaves_nothing(tmp_path, tiny_teacher_dir, exported, cli, monkeypatch):
    """A disagreeing fp32 export fails; reuse the exported files instead of exporting again."""
    from wdctl.export import onnx_export

    def copy_export(model_dir, dest):
        for name in ("encoder_model.onnx", "decoder_model_merged.onnx"):
            shutil.copy(exported["fp32"] / name, dest / name)
        for p in exported["fp32"].iterdir():
            if p.suffix != ".onnx" and p.name not in ("export_report.json", ".wdctl"):
                shutil.copy(p, dest / p.name)
        return {"files": {}, "onnx_total": 0, "four_file_total": 0, "saved_by_merged_decoder": 0,
                "pytorch_weights": 0, "export_seconds": 0}

    monkeypatch.setattr(onnx_export, "export_into", copy_export)
    with pytest.raises(WdctlError, match="disagrees with PyTorch") as info:
        onnx_export.export_onnx(tiny_teacher_dir, tmp_path / "api", logit_atol=-1.0)
    assert info.value.exit_code == 1 and not (tmp_path / "api").exists()

    real = onnx_export.validate_package

    def disagreeing(*args, **kwargs):
        report = real(*args, **kwargs)
        report["beam4"] = {"agree": 3, "total": 8, "agreement": 0.375}
        return report

    monkeypatch.setattr(onnx_export, "validate_package", disagreeing)
    code, _, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "cli", "--quantize", "int8", "--optimum")
    assert code == 1 and "beam4 agrees on 3/8" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cli").exists() and not _leftovers(tmp_path, "cli")


def test_existing_output_and_bad_options_are_input_errors(exported, tiny_teacher_dir, tmp_path, cli):
    code, _, err = cli("export", tiny_teacher_dir, "--out", exported["fp32"], "--quantize", "none")
    assert code == 2 and "--force" in err
    code, _, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "x", "--quantize", "int4")
    assert code == 2 and "--quantize" in err
    code, _, err = cli("export", tiny_teacher_dir, "--out", tmp_path / "x", "--device", "cuda", "--quantize", "none")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert code == 2 and "pip install 'wdctl[gpu]'" in err
    assert not (tmp_path / "x").exists()


def test_export_help(cli):
    code, out, _ = cli("export", "--help")
    assert code == 0
    for flag in ("--out", "--quantize", "--device", "--threads", "--force", "--keep-fp32", "--data"):
        assert flag in out


# ----------------------------------------------------------------------------- translate


def test_translate_package_and_model_dir_agree_and_keep_empty_lines(exported, tiny_teacher_dir, bible_pairs,
                                                                    tmp_path, cli):
    sources = [s for s, _ in bible_pairs["test"][:5]]
    lines = [sources[0], "", sources[1], sources[2], "  ", sources[3], sources[4]]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = {}
    for name, model in (("onnx", exported["fp32"]), ("torch", tiny_teacher_dir)):
        target = tmp_path / f"{name}.txt"
        code, _, err = cli("translate", model, "--input", src, "--output", target, "--beams", "2",
                           "--batch-size", "2")
        assert code == 0, err
        outputs[name] = target.read_text(encoding="utf-8").split("\n")[:-1]
    assert len(outputs["onnx"]) == len(lines)
    assert outputs["onnx"][1] == outputs["onnx"][4] == ""
    assert outputs["onnx"] == outputs["torch"]
    code, out, err = cli("translate", exported["int8"], "--input", src, "--beams", "1")
    assert code == 0, err
    assert len(out.split("\n")[:-1]) == len(lines)


def test_translate_package_runs_the_translator_graph(exported, tiny_teacher_dir, bible_pairs, tmp_path, cli,
                                                     monkeypatch):
    """Packages are translated by translator.onnx (optimum's path is not touched), token for
    token like PyTorch, greedy and beam 4, in length-sorted batches."""
    import wdctl.export.optimum_model as optimum_model

    sources = [s for s, _ in bible_pairs["test"][:9]]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(sources[:4] + [""] + sources[4:]) + "\n", encoding="utf-8")
    expected = {}
    for beams in ("1", "4"):
        code, out, err = cli("translate", tiny_teacher_dir, "--input", src, "--beams", beams, "--batch-size", "3")
        assert code == 0, err
        expected[beams] = out

    def refuse(*args, **kwargs):
        raise AssertionError("optimum's path was used")

    monkeypatch.setattr(optimum_model, "load_optimum", refuse)
    for beams in ("1", "4"):
        code, out, err = cli("translate", exported["fp32"], "--input", src, "--beams", beams, "--batch-size", "3")
        assert code == 0, err
        assert out == expected[beams], beams
        assert out.split("\n")[4] == ""


def test_translate_package_without_translator_runs_optimum(exported, tiny_teacher_dir, bible_pairs, tmp_path, cli,
                                                           monkeypatch):
    """A package from before the in-graph translator: optimum's generate over its encoder and
    decoder, the same lines as PyTorch."""
    import wdctl.export.optimum_model as optimum_model

    old = tmp_path / "old"
    shutil.copytree(exported["fp32"], old)
    (old / "translator.onnx").unlink()
    real, loaded = optimum_model.load_optimum, []

    def spy(package, **kwargs):
        loaded.append(package)
        return real(package, **kwargs)

    monkeypatch.setattr(optimum_model, "load_optimum", spy)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(s for s, _ in bible_pairs["test"][:6]) + "\n", encoding="utf-8")
    outputs = {}
    for name, model in (("old", old), ("torch", tiny_teacher_dir)):
        code, out, err = cli("translate", model, "--input", src, "--beams", "4", "--batch-size", "4")
        assert code == 0, err
        outputs[name] = out
    assert loaded == [old] and outputs["old"] == outputs["torch"] and len(outputs["old"].splitlines()) == 6


def test_translate_refuses_huge_beams_at_once(exported, tiny_teacher_dir):
    """`echo hi | wdctl translate PACKAGE --beams 100000`: one line, exit 2, before reading input."""
    import subprocess
    import sys

    wdctl = Path(sys.executable).with_name("wdctl")
    for model, beams in ((exported["fp32"], "100000"), (tiny_teacher_dir, "65")):
        proc = subprocess.run([str(wdctl), "translate", str(model), "--beams", beams], input="hi\n",
                              capture_output=True, text=True, timeout=300, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wdctl: error: --beams") and "64" in lines[0], proc.stderr


def test_translate_errors_name_the_file(exported, tmp_path, cli):
    code, _, err = cli("translate", exported["fp32"], "--input", tmp_path / "missing.txt")
    assert code == 2 and "missing.txt" in err
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    code, _, err = cli("translate", exported["fp32"], "--input", bad)
    assert code == 2 and "bad.txt:2" in err
    code, _, err = cli("translate", tmp_path / "nope", "--input", bad)
    assert code == 2 and "nope" in err


def test_translator_workers_give_the_same_lines(exported, bible_pairs):
    """`workers` (used by `compress --onnx-distill`) runs batches side by side: same output, same order."""
    from wdctl.export.translator import PackageTranslator

    sources = [s for s, _ in bible_pairs["test"][:24]] + [""]
    one = PackageTranslator(exported["fp32"]).translate(sources, beams=2, batch_size=4)
    two = PackageTranslator(exported["fp32"], workers=3).translate(sources, beams=2, batch_size=4)
    assert two == one and one[-1] == "" and all(one[:-1])


def test_translator_searches_at_most_rows_per_run(exported, bible_pairs, monkeypatch):
    """A batch runs as searches of at most `rows_per_run` sentences x beams (onnxruntime's CPU
    search slows past ~16 rows): a batch of 32 at 2 beams with 8 rows a run gives the searches,
    and the lines, of batches of 4."""
    from wdctl.export.translator import PackageTranslator

    sources = [s for s, _ in bible_pairs["test"][:24]] + [""]
    split = PackageTranslator(exported["fp32"], rows_per_run=8)
    sizes = []
    generate = split.translator.generate

    def counting(ids, **kwargs):
        sizes.append(len(ids))
        return generate(ids, **kwargs)

    monkeypatch.setattr(split.translator, "generate", counting)
    got = split.translate(sources, beams=2, batch_size=32)
    assert sizes == [4] * 6  # the 24 non-empty sentences
    assert got == PackageTranslator(exported["fp32"], rows_per_run=0).translate(sources, beams=2, batch_size=4)
    assert got[-1] == "" and all(got[:-1])
    with pytest.raises(InputError, match="rows per run"):
        PackageTranslator(exported["fp32"], rows_per_run=-1)


def test_int8_translator_gives_the_same_lines_without_amx(exported, tiny_corpus):
    """Integer products are exact on either kernel: in a process refused Intel AMX
    (`wdctl.core.amx`) the int8 translator returns what it returns where onnxruntime chose its
    kernels, greedy and beam 4. A filter is permanent, so both sides run in child processes."""
    import subprocess
    import sys
    import textwrap

    from wdctl.core import amx

    if not amx.supported():
        pytest.skip("seccomp filters: Linux x86-64 only")
    code = textwrap.dedent("""
        import json, sys
        from pathlib import Path
        from wdctl.core import amx
        if sys.argv[1] == "deny" and not amx.deny_amx():
            print("null"); sys.exit(0)
        from wdctl.core.corpus import read_parallel
        from wdctl.export.translator import PackageTranslator
        sources = [s for s, _ in read_parallel(Path(sys.argv[3]), "test")][:12]
        translator = PackageTranslator(sys.argv[2])
        print(json.dumps([translator.translate(sources, beams=b, batch_size=1) for b in (1, 4)]))
    """)
    outs = []
    for mode in ("default", "deny"):
        proc = subprocess.run([sys.executable, "-c", code, mode, str(exported["int8"]), str(tiny_corpus)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc.stdout.strip().splitlines()[-1])
    if outs[1] == "null":
        pytest.skip("this kernel or container refuses seccomp filters")
    greedy, beams = json.loads(outs[0])
    assert outs[0] == outs[1] and len(greedy) == 12 and any(greedy) and any(beams)


def test_onnx_teacher_exports_the_translator_alone(tiny_teacher_dir, tmp_path, bible_pairs):
    """`compress --onnx-distill`'s teacher cache: translator.onnx + config + tokenizer, current,
    and it translates."""
    from wdctl.export.build import OnnxTeacher

    teacher, workdir = OnnxTeacher(), tmp_path / "teacher-onnx"
    teacher.prepare(tiny_teacher_dir, workdir)
    assert sorted(p.name for p in workdir.glob("*.onnx")) == ["translator.onnx"] and teacher.current(workdir)
    lines = teacher.load(tiny_teacher_dir, workdir, threads=1, device="cpu").translate(
        [s for s, _ in bible_pairs["test"][:3]], beams=2)
    assert len(lines) == 3 and all(lines)


def test_export_builds_the_model_shortlist_into_the_translator(tmp_path, tiny_teacher_dir, bible_pairs, cli):
    """A model directory with a shortlist.json (teacher train and compress write one) exports a
    translator that multiplies only the shortlisted rows, reports its agreement with the full
    search, writes CTranslate2's vmap.txt; --no-shortlist (translate) and export --no-shortlist
    give the full search."""
    from wdctl.export.translator import translator_metadata
    from wdctl.passes.shortlist import Shortlist

    model = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, model)
    written = Shortlist.load(model / "shortlist.json")  # by `wdctl teacher train`
    assert written.size > 0 and written.vocab_size == 400
    Shortlist(400, written.frequent[:64], written.per_source, 128).save(model / "shortlist.json")
    code, out, err = cli("export", model, "--out", tmp_path / "sl", "--beams", "2")
    assert code == 0, err
    assert "with its 128-row shortlist greedy" in out
    check = _report(tmp_path / "sl")["translator"]["shortlist"]
    assert check["size"] == 128 and check["greedy"]["total"] == check["beam4"]["total"] > 0
    assert translator_metadata(tmp_path / "sl" / "translator.onnx")["wdctl.shortlist_size"] == "128"
    vmap = (tmp_path / "sl" / "vmap.txt").read_text(encoding="utf-8").splitlines()
    assert vmap[0].startswith("\t") and len(vmap[0].split(" ")) == 64 and len(vmap) > 1
    code, _, err = cli("export", model, "--out", tmp_path / "full", "--no-shortlist")
    assert code == 0, err
    assert not (tmp_path / "full" / "vmap.txt").exists()
    assert translator_metadata(tmp_path / "full" / "translator.onnx")["wdctl.shortlist_size"] == "0"
    src = tmp_path / "in.txt"
    src.write_text("\n".join(s for s, _ in bible_pairs["test"][:8]) + "\n", encoding="utf-8")
    lines = {}
    for name, package, flags in (("full", "full", []), ("sl-off", "sl", ["--no-shortlist"]), ("sl", "sl", [])):
        code, out, err = cli("translate", tmp_path / package, "--input", src, "--beams", "2", *flags)
        assert code == 0, err
        lines[name] = out.splitlines()
    assert lines["sl-off"] == lines["full"] and len(lines["sl"]) == 8
