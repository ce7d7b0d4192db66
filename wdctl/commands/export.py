"""`wdctl export`: ONNX package (verified against PyTorch), optionally int8 or fp16."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import List, Optional

import typer

from wdctl.app import app
from wdctl.commands.options import ForceOpt

QUANTIZE_CHOICES = ("int8", "fp16", "none")


def _sources_and_refs(data: Optional[str], max_sentences: int):
    """Sentences for the quality check: the dev split of `--data` (with references) or the
    exporter's built-in samples (compared with the fp32 output only)."""
    from wdctl.export.onnx_export import SAMPLE_SENTENCES

    if not data:
        return list(SAMPLE_SENTENCES), None
    from wdctl.core.corpus import read_parallel

    pairs = read_parallel(data, "dev")[:max_sentences]
    return [s for s, _ in pairs], [t for _, t in pairs]


def rescore(fp32_dir: Path, quant_dir: Path, mode: str, sources: list[str], refs: Optional[list[str]],
            beams: int, threads: int, device: str) -> dict:
    """BLEU / chrF of the fp32 and quantized packages (against references when given), and of
    the quantized output against the fp32 output."""
    from wdctl.export.decode import OrtTranslator
    from wdctl.core.metrics import bleu, chrf

    hyps = {}
    for name, path in (("fp32", fp32_dir), (mode, quant_dir)):
        translator = OrtTranslator(path, threads=threads, device=device)
        hyps[name] = translator.translate(sources, beams=beams, batch_size=16)
        del translator
    quality: dict = {"sentences": len(sources), "beams": beams, "references": refs is not None}
    if refs is not None:
        for name, out in hyps.items():
            quality[f"bleu_{name}"] = bleu(out, refs).score
            quality[f"chrf_{name}"] = chrf(out, refs).score
    agreement = bleu(hyps[mode], hyps["fp32"])
    quality[f"bleu_{mode}_vs_fp32"] = agreement.score
    quality["signature"] = agreement.signature
    quality["identical_sentences"] = sum(a == b for a, b in zip(hyps["fp32"], hyps[mode]))
    return quality


@app.command("export")
def export_command(
    model_dir: Path = typer.Argument(..., help="MarianMT directory (config.json, model.safetensors, tokenizer files)."),
    out: Path = typer.Option(..., "--out", help="Package directory to write (encoder_model.onnx, decoder_model_merged.onnx, config, tokenizer, export_report.json)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8 (dynamic, for CPUs), fp16 (for GPUs) or none. Default: int8 with --device cpu, fp16 with --device cuda."),
    device: str = typer.Option("cpu", "--device", help="Where the package is validated and meant to run: cpu, or cuda (needs onnxruntime-gpu: pip install 'wdctl\\[gpu]')."),
    threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads for validation and re-scoring."),
    isa: str = typer.Option("auto", "--isa", help="int8 target: auto (from /proc/cpuinfo), avx512_vnni, avx512, avx2 (uses reduce_range) or arm64."),
    keep_fp32: List[str] = typer.Option([], "--keep-fp32", help="Keep matching nodes in fp32 when quantizing to int8; repeatable. Aliases: lm_head (output projection), embeddings; otherwise a glob or substring of ONNX node names."),
    data: Optional[str] = typer.Option(None, "--data", help="Dev data for BLEU re-scoring after quantizing: a corpus directory (its dev split), a TSV file, or SRC,TGT files. Default: a few built-in sentences, scored against the fp32 output."),
    max_sentences: int = typer.Option(200, "--max-sentences", help="Use at most this many --data sentences for re-scoring."),
    beams: int = typer.Option(4, "--beams", help="Beam size for BLEU re-scoring."),
    force: bool = ForceOpt,
) -> None:
    """Export a MarianMT model to an onnxruntime package, verify it, and quantize it.

    Writes encoder_model.onnx and decoder_model_merged.onnx (one decoder with KV cache, so the decoder weights are stored once instead of in three decoder files) plus config and tokenizer files: ORTModelForSeq2SeqLM.from_pretrained(OUT) and `wdctl translate OUT` load it.

    The fp32 export is checked against PyTorch (max logit difference, greedy and beam-4 token agreement); a disagreement fails with nothing written. With --quantize, every ONNX file of the verified fp32 export is quantized and BLEU is re-scored for fp32 and the quantized package. The figures go to OUT/export_report.json.
    """
    from wdctl.core.atomic import atomic_dir, check_output_dir
    from wdctl.core.errors import InputError
    from wdctl.export.onnx_export import REPORT, export_onnx
    from wdctl.export.quantize import quantize_into
    from wdctl.export.session import providers_for
    from wdctl.core.runinfo import write_json

    if device not in ("cpu", "cuda"):
        raise InputError(f"--device must be cpu or cuda (got '{device}')")
    mode = quantize or ("int8" if device == "cpu" else "fp16")
    if mode not in QUANTIZE_CHOICES:
        raise InputError(f"--quantize must be one of {', '.join(QUANTIZE_CHOICES)} (got '{mode}')")
    if threads < 1 or beams < 1 or max_sentences < 1:
        raise InputError("--threads, --beams and --max-sentences must be at least 1")
    if keep_fp32 and mode != "int8":
        raise InputError("--keep-fp32 applies to --quantize int8 only")
    providers_for(device)
    check_output_dir(out, force)
    sources, refs = _sources_and_refs(data, max_sentences)

    if mode == "none":
        report = export_onnx(model_dir, out, force=force, device=device)
        _summary(out, report, None)
        return

    with atomic_dir(out, force) as tmp, tempfile.TemporaryDirectory(prefix=f".{out.name}.fp32-",
                                                                     dir=out.resolve().parent) as scratch:
        fp32_dir = Path(scratch) / "fp32"
        fp32_report = export_onnx(model_dir, fp32_dir, device=device)
        typer.echo(f"fp32 export verified ({_validation_line(fp32_report)}); quantizing to {mode}", err=True)
        quant_report = quantize_into(fp32_dir, tmp, mode=mode, isa=isa, keep_fp32=keep_fp32)
        quality = rescore(fp32_dir, tmp, mode, sources, refs, beams, threads, device)
        report = dict(fp32_report)
        quant_report["source"] = f"{model_dir} (fp32 export, validated, not kept)"
        write_json(tmp / "quantize_report.json", quant_report)
        report["quantization"] = quant_report
        report["quality"] = quality
        report["sizes_quantized"] = quant_report["sizes"]
        write_json(tmp / REPORT, report)
        for name in (REPORT, "quantize_report.json"):
            (tmp / name).chmod(0o644)
    _summary(out, report, mode)


def _validation_line(report: dict) -> str:
    check = report.get("validation")
    if not check:
        return "not validated"
    return (f"max |logit diff| {check['max_abs_logit_diff']:.1e}, greedy {check['greedy']['agree']}/"
            f"{check['greedy']['total']}, beam-4 {check['beam4']['agree']}/{check['beam4']['total']} identical")


def _summary(out: Path, report: dict, mode: Optional[str]) -> None:
    mb = 1024 * 1024
    sizes = report["sizes"]
    typer.echo(f"package written to {out}")
    typer.echo(f"  validation: {_validation_line(report)}")
    typer.echo(f"  fp32 ONNX: {sizes['onnx_total'] / mb:.1f} MB (four-file export {sizes['four_file_total'] / mb:.1f} MB, "
               f"PyTorch weights {sizes['pytorch_weights'] / mb:.1f} MB)")
    if mode:
        q = report["sizes_quantized"]
        typer.echo(f"  {mode} ONNX: {q['total_after'] / mb:.1f} MB ({q['ratio']:.2f} of fp32)")
        quality = report["quality"]
        parts = [f"{k}={v}" for k, v in quality.items() if k.startswith(("bleu_", "chrf_"))]
        typer.echo(f"  quality ({quality['sentences']} sentences, beam {quality['beams']}): {', '.join(parts)}")
        drop = quality.get("bleu_fp32", 0) - quality.get(f"bleu_{mode}", 0) if quality["references"] else None
        if (drop is not None and drop > 1.0) or quality[f"bleu_{mode}_vs_fp32"] < 50:
            print(f"wdctl: warning: {mode} output differs much from fp32 (see {out / 'export_report.json'}); "
                  "consider --keep-fp32 lm_head, or fp16", file=sys.stderr)
