"""The one way a model becomes packages: export → validate → quantize → re-score.

`build_package` is the chain behind `wdctl export`, `wdctl compress` (OUT.onnx/, OUT.int8/) and
the bench's package cache. `export_model` is `wdctl export` itself (options checked, sample
sentences or dev data, the quantized package standing alone).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

from wdctl.core.atomic import atomic_dir, check_output_dir
from wdctl.core.corpus import read_parallel
from wdctl.core.errors import InputError, WdctlError
from wdctl.core.metrics import bleu, chrf
from wdctl.core.runinfo import write_json
from wdctl.export.calibration import activation_ranges
from wdctl.export.onnx_export import SAMPLE_SENTENCES, VALIDATION_BEAMS, export_onnx
from wdctl.export.optimum_model import load_optimum
from wdctl.export.package import OnnxPackage
from wdctl.export.quantize import MODES, quantize_into
from wdctl.export.session import providers_for
from wdctl.passes.batching import output_limit_rule
from wdctl.passes.shortlist import FILE as SHORTLIST_FILE
from wdctl.passes.shortlist import VMAP_FILE, Shortlist

QUANTIZE_CHOICES = (*MODES, "none")
Translate = Callable[[list[str], int], list[str]]
# score(fp32 package, quantized package) -> figures, run before the quantized package is kept
Scorer = Callable[[Path, Path], dict]


def package_translator(package: Path, *, threads: int = 1, device: str = "cpu", batch_size: int = 16,
                       max_length: int = 256, graph: bool = False) -> Translate:
    """`translate(sentences, beams)` over an exported package. With `graph`, its in-graph
    translator when it has one (what `wdctl translate` runs on the CPU); otherwise optimum's
    `generate()` over the encoder and merged decoder: any package, fp16 ones included."""
    if graph and device == "cpu" and OnnxPackage(package).has_translator():
        from wdctl.export.translator import PackageTranslator

        translator = PackageTranslator(package, threads=threads)
        return lambda sentences, beams: translator.translate(sentences, beams=beams, batch_size=batch_size,
                                                             max_length=max_length)
    from wdctl.passes.translate import translate_torch

    model = load_optimum(package, threads=threads, device=device)
    tokenizer = OnnxPackage(package).load_tokenizer()

    def translate(sentences: list[str], beams: int) -> list[str]:
        return translate_torch(model, tokenizer, sentences, beams=beams, batch_size=batch_size,
                               max_length=max_length)

    return translate


def validation_line(report: dict) -> str:
    check = report.get("validation")
    graph = report.get("translator")
    if not check and not graph:
        return "not validated"
    line = ""
    if check:
        line = (f"max |logit diff| {check['max_abs_logit_diff']:.1e}, greedy {check['greedy']['agree']}/"
                f"{check['greedy']['total']}, beam-4 {check['beam4']['agree']}/{check['beam4']['total']} identical; ")
    if graph:
        line += (f"in-graph translator greedy {graph['greedy']['agree']}/{graph['greedy']['total']}, "
                 f"beam-4 {graph['beam4']['agree']}/{graph['beam4']['total']} identical")
        short = graph.get("shortlist")
        if short:
            line += (f"; with its {short['size']}-row shortlist greedy {short['greedy']['agree']}/"
                     f"{short['greedy']['total']}, beam-4 {short['beam4']['agree']}/{short['beam4']['total']} "
                     f"as without")
    return line.rstrip("; ")


def _export_optimum(model_dir: Path, out: Path, *, device: str, lenient: bool) -> tuple[dict, str | None]:
    """optimum's validated export; with `lenient`, a model that fails only the PyTorch-agreement
    check (barely trained models, whose beams tie) is exported again unchecked, with a note."""
    try:
        return export_onnx(model_dir, out, device=device, validate=True), None
    except InputError:
        raise
    except WdctlError as exc:
        if not lenient:
            raise
        report = export_onnx(model_dir, out, force=out.exists(), device=device, validate=False)
        return report, f"the ONNX export failed its check against PyTorch and is measured anyway ({exc})"


def validate_translator(model, tokenizer, path: Path, sentences: Sequence[str] = SAMPLE_SENTENCES,
                        beams: int = VALIDATION_BEAMS) -> dict:
    """The translator graph against PyTorch `generate` with `translate_torch`'s settings
    (early_stopping=True, each sentence's own `output_limit`: `generate_limited`), greedy and beam
    `beams`, on the sample the optimum export is validated with, in one padded batch: token
    agreement per search."""
    import torch

    from wdctl.export.translator import OnnxTranslator
    from wdctl.passes.translate import generate_limited

    sentences = [s for s in sentences if s.strip()]
    pad = model.config.pad_token_id
    enc = tokenizer(list(sentences), return_tensors="pt", padding=True, truncation=True,
                    max_length=min(256, tokenizer.model_max_length))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    sources = [row[:int(m.sum())] for row, m in zip(ids.tolist(), mask)]
    translator = OnnxTranslator(path)
    limit = min(256, translator.max_positions)
    report: dict = {"file": path.name, "sentences": len(sentences), "max_length": limit,
                    "output_limit": output_limit_rule(), "early_stopping": True}
    for name, num_beams in (("greedy", 1), (f"beam{beams}", beams)):
        extra = {"early_stopping": True} if num_beams > 1 else {}
        with torch.inference_mode():
            ref = generate_limited(model, ids, mask, num_beams, limit, **extra)
        ref_rows = []
        for row in ref.tolist():
            row = row[1:]
            while row and row[-1] == pad:
                row.pop()
            ref_rows.append(row)
        rows = translator.generate(sources, beams=num_beams, max_length=limit)
        agree = sum(a == b for a, b in zip(ref_rows, rows))
        report[name] = {"agree": agree, "total": len(ref_rows), "agreement": round(agree / len(ref_rows), 4)}
    report["passed"] = all(report[k]["agree"] == report[k]["total"] for k in ("greedy", f"beam{beams}"))
    return report


def add_translator(model_dir: Path, package: Path, save_files: bool = False, shortlist: bool = True,
                   calibration: Sequence[str] = SAMPLE_SENTENCES) -> dict:
    """Build `translator.onnx` (fp32) into `package` from the model's weights and validate it
    against PyTorch: identical tokens or `WdctlError`. Returns the validation report. With
    `save_files`, also the config, generation config and tokenizer files (a translator-only
    package: no optimum export wrote them). With `shortlist` and a `shortlist.json` in the model
    directory, the validated translator is then rebuilt with the shortlist inside
    (`add_shortlist`). `calibration`: the sentences int8's activation ranges are measured on."""
    import time
    import warnings

    from wdctl.export.translator import export_translator
    from wdctl.passes.marian import load_marian

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, tokenizer = load_marian(model_dir)
    model.eval()
    if save_files:
        for name in ("config.json", "generation_config.json"):
            if (Path(model_dir) / name).is_file():
                shutil.copy2(Path(model_dir) / name, package / name)
        tokenizer.save_pretrained(package)
    # int8's fixed activation scales (`calibration`): measured once here, kept in the file
    ranges = activation_ranges(model, tokenizer, calibration)
    path = export_translator(model, package / OnnxPackage.TRANSLATOR, activation_ranges=ranges)
    check = validate_translator(model, tokenizer, path)
    check["calibration_sentences"] = len([s for s in calibration if s.strip()])
    check["seconds"] = round(time.perf_counter() - started, 2)
    check["bytes"] = path.stat().st_size
    if not check["passed"]:
        failures = [f"{k} agrees on {check[k]['agree']}/{check[k]['total']}" for k in ("greedy", f"beam{VALIDATION_BEAMS}")
                    if check[k]["agree"] != check[k]["total"]]
        raise TranslatorMismatch(f"{model_dir}: the in-graph translator disagrees with PyTorch ({'; '.join(failures)})",
                                 check)
    if shortlist and (Path(model_dir) / SHORTLIST_FILE).is_file():
        where = Path(model_dir) / SHORTLIST_FILE
        try:
            check["shortlist"] = add_shortlist(model, tokenizer, Shortlist.load(where), package, ranges)
        except InputError as exc:  # e.g. a shortlist of another vocabulary: name the file
            message = str(exc) if str(where) in str(exc) else f"{where}: {exc}"
            raise InputError(f"{message} (export with --no-shortlist to leave it out)") from None
        check["bytes"] = path.stat().st_size
    return check


def add_shortlist(model, tokenizer, shortlist: Shortlist, package: Path, ranges: dict | None = None,
                  sentences: Sequence[str] = SAMPLE_SENTENCES, beams: int = VALIDATION_BEAMS) -> dict:
    """Rebuild the package's (validated, full-vocabulary) translator with `shortlist` inside,
    report how often its output equals the full search's on the validation sentences (a
    shortlist may change a line by design: the figure says how often), and write the shortlist
    beside it as CTranslate2's vocabulary mapping (`vmap.txt`; the translator holds its own copy)."""
    from wdctl.export.translator import OnnxTranslator, export_translator

    path = package / OnnxPackage.TRANSLATOR
    full = OnnxTranslator(path)
    shortlisted = package / f".{OnnxPackage.TRANSLATOR}.shortlist"
    export_translator(model, shortlisted, shortlist=shortlist, activation_ranges=ranges)
    sources = [row for row in tokenizer([t for t in sentences if t.strip()], truncation=True,
                                        max_length=min(256, tokenizer.model_max_length))["input_ids"]]
    limit = min(256, full.max_positions)
    report: dict = {"size": shortlist.size, "vocab_size": shortlist.vocab_size}
    candidate = OnnxTranslator(shortlisted)
    for name, num_beams in (("greedy", 1), (f"beam{beams}", beams)):
        want = full.generate(sources, beams=num_beams, max_length=limit)
        got = candidate.generate(sources, beams=num_beams, max_length=limit)
        agree = sum(a == b for a, b in zip(want, got))
        report[name] = {"agree": agree, "total": len(want), "agreement": round(agree / len(want), 4)}
    shortlisted.replace(path)
    pieces = tokenizer.convert_ids_to_tokens(list(range(shortlist.vocab_size)))
    shortlist.write_vmap(package / VMAP_FILE, pieces)
    return report


class TranslatorMismatch(WdctlError):
    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _translator_only_report(model_dir: Path, device: str) -> dict:
    """The export report of a package without optimum's files (what `export_onnx` records,
    less optimum's graphs and their check)."""
    from wdctl.core.runinfo import cpu_info, versions
    from wdctl.export.onnx_export import TASK

    return {"model_dir": str(model_dir), "task": TASK, "files": [], "optimum": False, "device": device,
            "sizes": {"files": {}, "onnx_total": 0,
                      "pytorch_weights": (Path(model_dir) / "model.safetensors").stat().st_size},
            "versions": versions(), "cpu": cpu_info()}


def _export_fp32(model_dir: Path, out: Path, *, device: str, force: bool, lenient: bool,
                 optimum: bool = True, shortlist: bool = True,
                 calibration: Sequence[str] = SAMPLE_SENTENCES) -> tuple[dict, str | None]:
    """The validated export: optimum's files (`export_onnx`, with `optimum`) plus the in-graph
    translator, each checked against PyTorch; nothing is written at `out` when a check fails.
    With `lenient`, a model that fails only the agreement checks is exported anyway, with a note."""
    out = Path(out)
    check_output_dir(out, force)
    with atomic_dir(out, force) as tmp:
        if optimum:
            inner = tmp / "optimum"
            try:
                report, note = _export_optimum(model_dir, inner, device=device, lenient=lenient)
            except WdctlError as exc:  # name the real output, not the scratch directory
                raise type(exc)(str(exc).replace(str(inner), str(out))) from None
            for path in inner.iterdir():
                shutil.move(str(path), str(tmp / path.name))
            inner.rmdir()
        else:
            report, note = None, None
        try:
            check = add_translator(model_dir, tmp, save_files=not optimum, shortlist=shortlist,
                                   calibration=calibration)
        except TranslatorMismatch as exc:
            if not lenient:
                raise WdctlError(f"{exc}; nothing written to {out}") from None
            check = {**exc.report, "passed": False}
            note = "; ".join(filter(None, [note, f"the in-graph translator failed its check against PyTorch and is "
                                                 f"measured anyway ({exc})"]))
        except InputError:  # a bad model directory (translator-only: nothing checked it before)
            raise
        except WdctlError as exc:
            raise WdctlError(f"{exc}; nothing written to {out}") from None
        if report is None:
            report = _translator_only_report(model_dir, device)
        report["translator"] = check
        report["files"] = sorted({*report["files"], OnnxPackage.TRANSLATOR})
        report["sizes"]["translator"] = report["translator"]["bytes"]
        write_json(tmp / OnnxPackage.EXPORT_REPORT, report)
        (tmp / OnnxPackage.EXPORT_REPORT).chmod(0o644)
    return report, note


def needs_optimum(device: str, mode: str | None) -> bool:
    """Whether a package must hold optimum's encoder and decoder: the in-graph translator runs on
    the CPU only and has no fp16 build, so `--device cuda` and fp16 packages run optimum's files."""
    return device != "cpu" or mode == "fp16"


def build_package(model_dir: Path | str, fp32_dir: Path | str | None, quant_dir: Path | str | None = None, *,
                  mode: str = "int8", isa: str = "auto", keep_fp32: Iterable[str] = (), device: str = "cpu",
                  force: bool = False, export: bool = True, lenient: bool = False, score: Scorer | None = None,
                  log: Callable[[str], None] | None = None, optimum: bool | None = True,
                  shortlist: bool = True, calibration: Sequence[str] = SAMPLE_SENTENCES) -> dict:
    """Export `model_dir` to the fp32 package `fp32_dir` (validated against PyTorch), quantize it
    to `quant_dir` (`mode`), and re-score the quantized package with `score` before keeping it.

    `fp32_dir=None`: the fp32 export goes to a scratch directory and is not kept, and the
    quantized package carries the export report too (what `wdctl export` writes).
    `export=False`: `fp32_dir` already holds the package; only quantize.
    `optimum`: also write optimum's encoder and merged decoder (validated too); None: only where
    they are needed (`needs_optimum`: what `wdctl export` and `wdctl compress` do).
    Without them a package is the translator, config and tokenizer files.
    `shortlist`: the translator multiplies only a shortlist of output rows when the model
    directory has a `shortlist.json` (`add_shortlist`).
    `calibration`: source sentences int8's fixed activation scales are measured on
    (`wdctl.export.calibration`; the exporter's samples unless given).
    Returns {"onnx": export report, MODE: quantize report, "quality": score's figures, "note": ...}.
    """
    model_dir = Path(model_dir)
    result: dict = {}
    if optimum is None:
        optimum = needs_optimum(device, mode if quant_dir is not None else "none")
    if quant_dir is None:
        result["onnx"], result["note"] = _export_fp32(model_dir, Path(fp32_dir), device=device, force=force,
                                                      lenient=lenient, optimum=optimum, shortlist=shortlist,
                                                      calibration=calibration)
        return result
    quant_dir = Path(quant_dir)
    with atomic_dir(quant_dir, force) as tmp, tempfile.TemporaryDirectory(
            prefix=f".{quant_dir.name}.fp32-", dir=quant_dir.resolve().parent) as scratch:
        standalone = fp32_dir is None
        source = Path(scratch) / "fp32" if standalone else Path(fp32_dir)
        if export:
            result["onnx"], result["note"] = _export_fp32(model_dir, source, device=device, force=force,
                                                          lenient=lenient, optimum=optimum, shortlist=shortlist,
                                                          calibration=calibration)
            if log:
                log(f"fp32 export verified ({validation_line(result['onnx'])}); quantizing to {mode}")
        report = quantize_into(source, tmp, mode=mode, isa=isa, keep_fp32=keep_fp32)
        result[mode] = report
        if score is not None:
            result["quality"] = score(source, tmp)
        if standalone:
            report["source"] = f"{model_dir} (fp32 export, validated, not kept)"
            write_json(tmp / OnnxPackage.QUANTIZE_REPORT, report)
            combined = {**result["onnx"], "quantization": report, "quality": result.get("quality"),
                        "sizes_quantized": report["sizes"]}
            write_json(tmp / OnnxPackage.EXPORT_REPORT, combined)
            for name in OnnxPackage.REPORTS:
                (tmp / name).chmod(0o644)
            result["report"] = combined
    return result


def compare_packages(fp32_dir: Path, quant_dir: Path, mode: str, sources: list[str], refs: list[str] | None,
                     beams: int, threads: int, device: str) -> dict:
    """BLEU / chrF of the fp32 and quantized packages (against references when given), and of
    the quantized output against the fp32 output."""
    # translator-only packages (no optimum files) are scored on their translator alone
    graph_only = not all(OnnxPackage(path).has_optimum() for path in (fp32_dir, quant_dir))
    hyps = {}
    for name, path in (("fp32", fp32_dir), (mode, quant_dir)):
        hyps[name] = package_translator(path, threads=threads, device=device, graph=graph_only)(sources, beams)
    quality: dict = {"sentences": len(sources), "beams": beams, "references": refs is not None}
    if graph_only:
        quality["engine"] = OnnxPackage.TRANSLATOR
    if refs is not None:
        for name, out in hyps.items():
            quality[f"bleu_{name}"] = bleu(out, refs).score
            quality[f"chrf_{name}"] = chrf(out, refs).score
    agreement = bleu(hyps[mode], hyps["fp32"])
    quality[f"bleu_{mode}_vs_fp32"] = agreement.score
    quality["signature"] = agreement.signature
    quality["identical_sentences"] = sum(a == b for a, b in zip(hyps["fp32"], hyps[mode]))
    if graph_only:  # the figures above are the translator's already
        quality["translator"] = {"file": OnnxPackage.TRANSLATOR, "beams": beams,
                                 **{k.replace(f"_{mode}", "_int8"): v for k, v in quality.items()
                                    if k.startswith(("bleu_", "chrf_")) or k == "identical_sentences"}}
    elif mode == "int8" and OnnxPackage(fp32_dir).has_translator() and OnnxPackage(quant_dir).has_translator():
        quality["translator"] = _compare_translators(fp32_dir, quant_dir, sources, refs, beams, threads)
    return quality


def _compare_translators(fp32_dir: Path, quant_dir: Path, sources: list[str], refs: list[str] | None, beams: int,
                         threads: int) -> dict:
    """The in-graph translator's re-score: fp32 and int8, the same figures as above."""
    from wdctl.export.translator import PackageTranslator

    hyps = {name: PackageTranslator(path, threads=threads).translate(sources, beams=beams)
            for name, path in (("fp32", fp32_dir), ("int8", quant_dir))}
    quality: dict = {"file": OnnxPackage.TRANSLATOR, "beams": beams}
    if refs is not None:
        for name, out in hyps.items():
            quality[f"bleu_{name}"] = bleu(out, refs).score
            quality[f"chrf_{name}"] = chrf(out, refs).score
    quality["bleu_int8_vs_fp32"] = bleu(hyps["int8"], hyps["fp32"]).score
    quality["identical_sentences"] = sum(a == b for a, b in zip(hyps["fp32"], hyps["int8"]))
    return quality


def _sources_and_refs(data: str | None, max_sentences: int) -> tuple[list[str], list[str] | None]:
    """Sentences for the quality check: the dev split of `data` (with references) or the
    exporter's built-in samples (compared with the fp32 output only)."""
    if not data:
        return list(SAMPLE_SENTENCES), None
    pairs = read_parallel(data, "dev")[:max_sentences]
    return [s for s, _ in pairs], [t for _, t in pairs]


def export_model(model_dir: Path, out: Path, *, quantize: str | None = None, device: str = "cpu", threads: int = 1,
                 isa: str = "auto", keep_fp32: Sequence[str] = (), data: str | None = None, max_sentences: int = 200,
                 beams: int = 4, force: bool = False, log: Callable[[str], None] | None = None,
                 optimum: bool | None = None, shortlist: bool = True) -> tuple[dict, str | None]:
    """`wdctl export`: returns (the package's export report, the quantization mode or None).
    `optimum` None: optimum's files only where they are needed (`needs_optimum`)."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda (got '{device}')")
    mode = quantize or ("int8" if device == "cpu" else "fp16")
    if mode not in QUANTIZE_CHOICES:
        raise InputError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)} (got '{mode}')")
    if threads < 1 or beams < 1 or max_sentences < 1:
        raise InputError("--threads, --beams and --max-sentences must be at least 1")
    if keep_fp32 and mode != "int8":
        raise InputError("--keep-fp32 applies to --quantize int8 only")
    if optimum is False and needs_optimum(device, mode):
        raise InputError("--no-optimum: --device cuda and --quantize fp16 run optimum's encoder and decoder "
                         "(the in-graph translator is for CPUs, fp32 or int8)")
    if keep_fp32 and optimum is False:
        raise InputError("--keep-fp32 applies to optimum's files (the translator's int8 keeps no nodes in fp32): "
                         "drop --no-optimum")
    # --keep-fp32 names nodes of optimum's files: it asks for them
    optimum = bool(optimum) or bool(keep_fp32) or needs_optimum(device, mode)
    providers_for(device)
    check_output_dir(out, force)
    sources, refs = _sources_and_refs(data, max_sentences)
    if mode == "none":
        return build_package(model_dir, out, None, device=device, force=force, optimum=optimum,
                             shortlist=shortlist, calibration=sources)["onnx"], None

    def score(fp32: Path, quantized: Path) -> dict:
        return compare_packages(fp32, quantized, mode, sources, refs, beams, threads, device)

    result = build_package(model_dir, None, out, mode=mode, isa=isa, keep_fp32=keep_fp32, device=device, force=force,
                           score=score, log=log, optimum=optimum, shortlist=shortlist, calibration=sources)
    return result["report"], mode


class OnnxTeacher:
    """A `wdctl.passes.distill.TeacherBackend`: the teacher exported once (fp32, validated) into
    the distillation cache and decoded by its in-graph translator on the CPU (`compress
    --onnx-distill`): the same output as PyTorch (validated at export), one batch per thread.
    It searches the full vocabulary: a shortlist would change the teacher's lines."""

    name = "onnx"

    def prepare(self, teacher_dir: Path, workdir: Path) -> None:
        from tqdm.auto import tqdm

        if not (workdir / "config.json").is_file():
            tqdm.write(f"distill: exporting the teacher to ONNX once, into {workdir}")
        elif not self.current(workdir):
            tqdm.write(f"distill: the teacher's ONNX export in {workdir} predates the per-sentence output limit "
                       "or has a shortlist; exporting it again")
        else:
            return
        # the translator is all it runs
        build_package(teacher_dir, workdir, force=workdir.exists(), optimum=False, shortlist=False)

    @staticmethod
    def current(workdir: Path) -> bool:
        """Whether the export in `workdir` has a full-vocabulary translator that ends each sentence
        at this wdctl's output limit (older ones still run, one search per limit: slower)."""
        from wdctl.export.translator import translator_metadata

        package = OnnxPackage(workdir)
        if not package.has_translator():
            return False
        meta = translator_metadata(package.translator)
        return meta.get("wdctl.output_limit") == output_limit_rule() and meta.get("wdctl.shortlist_size", "0") == "0"

    def load(self, teacher_dir: Path, workdir: Path, threads: int, device):
        from wdctl.export.translator import PackageTranslator

        self.prepare(teacher_dir, workdir)
        return PackageTranslator(workdir, workers=threads)
