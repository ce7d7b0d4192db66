"""Export a MarianMT directory to an onnxruntime package and verify it against PyTorch.

The package (`wdctl.export.package.OnnxPackage`) holds the encoder and one merged decoder (with
and without KV cache, weights stored once), config, generation config and tokenizer files, so
`ORTModelForSeq2SeqLM.from_pretrained(package)` loads it with its defaults. optimum also writes
two more decoder files: each stores the decoder weights (and the shared embeddings) again, and
the merged file serves both uses, so they are deleted; the report records how many bytes that
saved.

Validation is part of the export: on sample sentences, PyTorch and the package in optimum's
`generate()` (`wdctl.export.optimum_model`) are compared: logits (teacher-forced on PyTorch's
greedy output) within `LOGIT_ATOL`, and greedy and beam-4 translations must be identical on at
least `MIN_AGREEMENT` of them (the report keeps the exact counts). A failure raises
`WdctlError` and leaves nothing at `out`.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from wdctl.core.atomic import atomic_dir, check_output_dir
from wdctl.core.errors import InputError, WdctlError
from wdctl.core.runinfo import cpu_info, versions, write_json
from wdctl.export.optimum_model import load_optimum
from wdctl.export.package import OnnxPackage
from wdctl.export.session import providers_for
from wdctl.passes.batching import output_limit
from wdctl.passes.marian import load_marian

TASK = "text2text-generation-with-past"
REPORT = OnnxPackage.EXPORT_REPORT
LOGIT_ATOL = 1e-3
# Logits are the strict check. Translation agreement tolerates a flip or two: in a barely-trained
# model, beam candidates tie to within float noise, and a 1e-6 difference can pick the other one.
MIN_AGREEMENT = 0.75
VALIDATION_BEAMS = 4

SAMPLE_SENTENCES = (
    "In the beginning God created the heaven and the earth.",
    "And God said, Let there be light: and there was light.",
    "The quick brown fox jumps over the lazy dog.",
    "Where are you going?",
    "I will give you rest.",
    "Blessed are the meek: for they shall inherit the earth.",
    "Please send the report before the meeting on Monday morning.",
    "Yes.",
)


@contextlib.contextmanager
def _quiet():
    """optimum's exporter prints tracer warnings and info lines that mean nothing to a user."""
    loggers = [logging.getLogger(name) for name in ("optimum", "transformers", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging

        hf_level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        hf_logging, hf_level = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            if hf_logging is not None:
                hf_logging.set_verbosity(hf_level)


@contextlib.contextmanager
def _exportable(model_dir: Path):
    """wdctl's narrow Marian (the TINY student) through optimum: its ONNX config registered, and
    optimum made to take it for a transformers model (`wdctl.passes.narrow_onnx`); a Marian
    directory as it is."""
    from wdctl.passes.marian import load_marian_config
    from wdctl.passes.narrow_marian import is_narrow

    if not is_narrow(load_marian_config(model_dir)):
        yield
        return
    from wdctl.passes.narrow_onnx import as_transformers_model, register_onnx_config

    register_onnx_config()
    with as_transformers_model():
        yield


def export_into(model_dir: Path, dest: Path) -> dict:
    """Run optimum's exporter into the existing directory `dest` and keep encoder + merged
    decoder only. Returns the size record. The model directory must already be checked."""
    from optimum.exporters.onnx import main_export

    started = time.perf_counter()
    try:
        with _quiet(), _exportable(model_dir):
            main_export(str(model_dir), output=str(dest), task=TASK, device="cpu", do_validation=False,
                        local_files_only=True, trust_remote_code=False, library_name="transformers")
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        raise WdctlError(f"{model_dir}: ONNX export failed ({str(exc).splitlines()[0][:300]})") from None
    package = OnnxPackage(dest)
    missing = package.missing()
    if missing:
        raise WdctlError(f"{model_dir}: the exporter wrote no {', '.join(missing)} "
                         "(optimum could not build a merged decoder with KV cache)")
    all_files = package.file_sizes()
    package.drop_optimum_only()
    kept = package.file_sizes()
    return {
        "files": kept,
        "onnx_total": sum(kept.values()),
        "four_file_total": sum(all_files.values()),
        "saved_by_merged_decoder": sum(all_files.values()) - sum(kept.values()),
        "pytorch_weights": (model_dir / "model.safetensors").stat().st_size,
        "export_seconds": round(time.perf_counter() - started, 2),
    }


def _strip(seq: Sequence[int], pad: int) -> list[int]:
    """A `generate()` row without its start token and trailing padding."""
    seq = list(seq[1:])
    while seq and seq[-1] == pad:
        seq.pop()
    return seq


def validate_package(model, tokenizer, package: Path, sentences: Sequence[str], *, device: str = "cpu",
                     beams: int = VALIDATION_BEAMS) -> dict:
    """PyTorch against the package in optimum's `generate()` (`load_optimum`) on `sentences`:
    greedy / beam translations through `translate_torch` (one batch), and logits teacher-forced
    on PyTorch's greedy output."""
    import torch

    from wdctl.passes.translate import translate_torch

    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise InputError("no non-empty sample sentences to validate the export with")
    pad = model.config.pad_token_id
    enc = tokenizer(list(sentences), return_tensors="pt", padding=True, truncation=True,
                    max_length=min(256, tokenizer.model_max_length))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    limit = output_limit(ids.shape[1])
    ort_model = load_optimum(package, device=device)
    report: dict = {"sentences": len(sentences), "max_length": limit}
    for name, num_beams in (("greedy", 1), (f"beam{beams}", beams)):
        ref, ours = (translate_torch(m, tokenizer, sentences, beams=num_beams, batch_size=len(sentences))
                     for m in (model, ort_model))
        agree = sum(a == b for a, b in zip(ref, ours))
        report[name] = {"agree": agree, "total": len(ref), "agreement": round(agree / len(ref), 4)}

    with torch.inference_mode():
        greedy = model.generate(input_ids=ids, attention_mask=mask, num_beams=1, max_length=limit)
        torch_logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=greedy).logits.float().numpy()
        on_device = {k: v.to(ort_model.device) for k, v in (("input_ids", ids), ("attention_mask", mask),
                                                            ("decoder_input_ids", greedy))}
        ort_logits = ort_model.model(**on_device).logits.float().cpu().numpy()
    # positions up to and including each row's EOS (later ones are padding)
    valid = np.ones(greedy.shape, dtype=bool)
    for i, row in enumerate(greedy.tolist()):
        valid[i, len(_strip(row, pad)) + 1:] = False
    diff = np.abs(torch_logits - ort_logits)[valid]
    report["max_abs_logit_diff"] = float(diff.max())
    report["mean_abs_logit_diff"] = float(diff.mean())
    return report


def export_onnx(model_dir: Path | str, out: Path | str, *, force: bool = False, device: str = "cpu",
                validate: bool = True, sample_sentences: Sequence[str] | None = None,
                logit_atol: float = LOGIT_ATOL, min_agreement: float = MIN_AGREEMENT) -> dict:
    """Export `model_dir` (a MarianMT directory) to an onnxruntime package at `out`.

    Returns the report, also written to `out/export_report.json`. A bad model directory raises
    InputError, a failed export or validation WdctlError; either way nothing is left at `out`.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_output_dir(out, force)
    providers_for(device)
    with _quiet():
        model, tokenizer = load_marian(model_dir)
    sentences = list(sample_sentences) if sample_sentences else list(SAMPLE_SENTENCES)
    started = time.perf_counter()
    with atomic_dir(out, force) as tmp:
        sizes = export_into(model_dir, tmp)
        report: dict = {
            "model_dir": str(model_dir),
            "task": TASK,
            "files": sorted(sizes["files"]),
            "sizes": sizes,
            "device": device,
        }
        if validate:
            with _quiet():
                check = validate_package(model, tokenizer, tmp, sentences, device=device)
            check["logit_atol"] = logit_atol
            check["min_agreement"] = min_agreement
            failures = []
            if not check["max_abs_logit_diff"] <= logit_atol:
                failures.append(f"max |logit diff| {check['max_abs_logit_diff']:.2e} > {logit_atol:g}")
            for key in ("greedy", f"beam{VALIDATION_BEAMS}"):
                if check[key]["agreement"] < min_agreement:
                    failures.append(f"{key} agrees on {check[key]['agree']}/{check[key]['total']} sentences")
            check["passed"] = not failures
            report["validation"] = check
            if failures:
                raise WdctlError(f"{model_dir}: ONNX export disagrees with PyTorch ({'; '.join(failures)}); "
                                 f"nothing written to {out}")
        report["seconds"] = round(time.perf_counter() - started, 2)
        report["versions"] = versions()
        report["cpu"] = cpu_info()
        write_json(tmp / REPORT, report)
        (tmp / REPORT).chmod(0o644)
    return report
