"""`wdctl translate`: translate lines with a MarianMT directory or an exported ONNX package."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from wdctl.app import app


def _read_input(path: Optional[Path]) -> list[str]:
    from wdctl.core.corpus import read_lines
    from wdctl.core.errors import InputError

    if path is not None:
        return read_lines(path, allow_empty=True)
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"<stdin>: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


@app.command("translate")
def translate_command(
    model_dir: Path = typer.Argument(..., help="A MarianMT directory, or a package written by `wdctl export` (has translator.onnx, or optimum's encoder_model.onnx)."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Text file, one sentence per line (default: standard input)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Where to write translations, one per input line (default: standard output)."),
    beams: int = typer.Option(4, "--beams", help="Beam size (1 = greedy)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Sentences per batch (batches are length-sorted). An ONNX package splits a batch into searches of a few sentences x beams, where onnxruntime's CPU search is fastest."),
    threads: int = typer.Option(1, "--threads", help="Intra-op threads (onnxruntime for packages, torch otherwise)."),
    max_length: int = typer.Option(256, "--max-length", help="Longest output in tokens (also capped at 1.5 x source + 10)."),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="Beam-search length penalty (score / length ** penalty)."),
    device: str = typer.Option("cpu", "--device", help="cpu, or cuda for ONNX packages (needs onnxruntime-gpu: pip install 'wdctl\\[gpu]')."),
    shortlist: bool = typer.Option(True, "--shortlist/--no-shortlist", help="With a package whose translator has a vocabulary shortlist (shortlist.json beside it): multiply only the shortlisted output rows (default), or search the full vocabulary (slower)."),
) -> None:
    """Translate one sentence per line; empty lines stay empty, so output lines match input lines.

    ONNX packages (from `wdctl export`) run their in-graph translator (translator.onnx: encoder, decoder and greedy/beam search in one onnxruntime graph), the same tokens as transformers' generate in fp32; packages without one (older exports) and --device cuda run optimum's generate over the package's encoder and decoder. MarianMT directories are decoded with PyTorch. --beams is at most 64. On CPUs with Intel AMX, searches of at most 4 sentences x beams (e.g. --batch-size 1, --beams 4) run the package's int8 products on AVX-512 VNNI, which is faster there: this process is refused AMX (a seccomp filter, Linux x86-64).
    """
    from wdctl.core.atomic import atomic_write_text
    from wdctl.recipes.translate import translate_lines

    hyps = translate_lines(model_dir, lambda: _read_input(input), beams=beams, batch_size=batch_size, threads=threads,
                           max_length=max_length, length_penalty=length_penalty, device=device,
                           warn=lambda text: typer.echo(text, err=True), shortlist=shortlist)
    text = "".join(h + "\n" for h in hyps)
    if output is not None:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
