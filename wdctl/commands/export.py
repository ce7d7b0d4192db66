"""`wdctl export`: ONNX package (verified against PyTorch), optionally int8 or fp16."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from wdctl.app import app
from wdctl.commands.options import ForceOpt


@app.command("export")
def export_command(
    model_dir: Path = typer.Argument(..., help="MarianMT directory (config.json, model.safetensors, tokenizer files)."),
    out: Path = typer.Option(..., "--out", help="Package directory to write (translator.onnx, config, tokenizer, export_report.json; with --optimum also encoder_model.onnx, decoder_model_merged.onnx)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8 (dynamic, for CPUs), fp16 (for GPUs) or none. Default: int8 with --device cpu, fp16 with --device cuda."),
    device: str = typer.Option("cpu", "--device", help="Where the package is validated and meant to run: cpu, or cuda (needs onnxruntime-gpu: pip install 'wdctl\\[gpu]')."),
    threads: int = typer.Option(1, "--threads", help="onnxruntime intra-op threads for validation and re-scoring."),
    isa: str = typer.Option("auto", "--isa", help="int8 target: auto (from /proc/cpuinfo), avx512_vnni, avx512, avx2 (uses reduce_range) or arm64."),
    keep_fp32: List[str] = typer.Option([], "--keep-fp32", help="Keep matching nodes of optimum's files in fp32 when quantizing to int8 (implies --optimum); repeatable. Aliases: lm_head (output projection), embeddings; otherwise a glob or substring of ONNX node names."),
    data: Optional[str] = typer.Option(None, "--data", help="Dev data for int8's calibration (the activation ranges are measured on its source sentences) and for BLEU re-scoring after quantizing: a corpus directory (its dev split), a TSV file, or SRC,TGT files. Default: 8 built-in English sentences, scored against the fp32 output: pass your own for a source language other than English."),
    max_sentences: int = typer.Option(200, "--max-sentences", help="Use at most this many --data sentences for re-scoring."),
    beams: int = typer.Option(4, "--beams", help="Beam size for BLEU re-scoring."),
    optimum: Optional[bool] = typer.Option(None, "--optimum/--no-optimum", help="Also write optimum's encoder_model.onnx and decoder_model_merged.onnx (validated against PyTorch too), for ORTModelForSeq2SeqLM. Default: only with --device cuda, --quantize fp16 or --keep-fp32, which need them (translator.onnx runs on the CPU, in fp32 or int8); otherwise the package is translator.onnx + config + tokenizer, about a third of the size."),
    shortlist: bool = typer.Option(True, "--shortlist/--no-shortlist", help="When MODEL_DIR has a shortlist.json (written by `wdctl compress` and `wdctl shortlist`), build the translator to multiply only the batch's shortlisted output rows; the package gets shortlist.json and vmap.txt (CTranslate2's --vocab_mapping). `wdctl translate --no-shortlist` still searches the full vocabulary."),
    force: bool = ForceOpt,
) -> None:
    """Export a MarianMT model to an onnxruntime package, verify it, and quantize it.

    Writes translator.onnx (encoder, decoder and the whole beam search in one onnxruntime graph) plus config and tokenizer files: `wdctl translate OUT` loads it. With --optimum (always with --device cuda or --quantize fp16) also encoder_model.onnx and decoder_model_merged.onnx (one decoder with KV cache, so the decoder weights are stored once instead of in three decoder files): ORTModelForSeq2SeqLM.from_pretrained(OUT) loads those.

    The fp32 export is checked against PyTorch (translator: greedy and beam-4 token agreement; optimum's files: also max logit difference); a disagreement fails with nothing written. With --quantize, every ONNX file of the verified fp32 export is quantized and BLEU is re-scored for fp32 and the quantized package. The figures go to OUT/export_report.json.
    """
    from wdctl.export.build import export_model

    report, mode = export_model(model_dir, out, quantize=quantize, device=device, threads=threads, isa=isa,
                                keep_fp32=keep_fp32, data=data, max_sentences=max_sentences, beams=beams, force=force,
                                log=lambda text: typer.echo(text, err=True), optimum=optimum, shortlist=shortlist)
    _summary(out, report, mode)
    if mode == "int8" and data is None:
        typer.echo("note: int8's activation ranges were measured on the exporter's 8 English sample sentences; "
                   "for a model whose source language is not English, export again with --data and its own dev "
                   "sentences", err=True)


def _summary(out: Path, report: dict, mode: Optional[str]) -> None:
    from wdctl.export.build import validation_line
    from wdctl.export.package import OnnxPackage

    def mib(n: int) -> str:
        return f"{n / 2**20:.1f} MiB"

    def graphs(files: dict[str, int]) -> str:
        """Every ONNX file of a package (translator.onnx included), total and split."""
        translator = sum(n for name, n in files.items() if name.startswith("translator.onnx"))
        if translator == sum(files.values()):
            return f"{mib(translator)} (translator.onnx only)"
        return (f"{mib(sum(files.values()))} (encoder + merged decoder {mib(sum(files.values()) - translator)}, "
                f"translator.onnx {mib(translator)})")

    sizes = report["sizes"]
    written = [p for p in Path(out).rglob("*") if p.is_file()]
    typer.echo(f"package written to {out}: {len(written)} files, {mib(sum(p.stat().st_size for p in written))}")
    typer.echo(f"  validation: {validation_line(report)}")
    # fp32 and quantized figures count the same files: every ONNX graph with its external data
    fp32 = report["sizes_quantized"]["before"] if mode else OnnxPackage(out).file_sizes()
    four = f"optimum's four-file export {mib(sizes['four_file_total'])}, " if "four_file_total" in sizes else ""
    typer.echo(f"  fp32 ONNX: {graphs(fp32)}; {four}PyTorch weights {mib(sizes['pytorch_weights'])}")
    if mode:
        q = report["sizes_quantized"]
        typer.echo(f"  {mode} ONNX: {graphs(q['after'])}, {q['ratio']:.2f} of fp32")
        quality = report["quality"]
        parts = [f"{k}={v}" for k, v in quality.items() if k.startswith(("bleu_", "chrf_"))]
        typer.echo(f"  quality ({quality['sentences']} sentences, beam {quality['beams']}): {', '.join(parts)}")
        drop = quality.get("bleu_fp32", 0) - quality.get(f"bleu_{mode}", 0) if quality["references"] else None
        if (drop is not None and drop > 1.0) or quality[f"bleu_{mode}_vs_fp32"] < 50:
            print(f"wdctl: warning: {mode} output differs much from fp32 (see {out / 'export_report.json'}); "
                  "consider --keep-fp32 lm_head, or fp16", file=sys.stderr)
