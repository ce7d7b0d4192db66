"""`wdctl bench`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from wdctl.app import app


@app.command("bench")
def bench_command(
    teacher: Path = typer.Option(..., "--teacher", help="Teacher MarianMT directory."),
    student: List[Path] = typer.Option([], "--student", help="Student MarianMT directory; repeat for several (none: the teacher alone)."),
    data: str = typer.Option(..., "--data", help="Test data: a corpus directory (its --split is used), a TSV file, or SRC,TGT text files."),
    split: str = typer.Option("test", "--split", help="Split to read from a corpus directory."),
    beams: Optional[str] = typer.Option(None, "--beams", help="Beam sizes, comma-separated (default 1,4; with --quick 1)."),
    batch_sizes: Optional[str] = typer.Option(None, "--batch-sizes", help="Batch sizes, comma-separated (default 1,32; with --quick 1)."),
    threads: Optional[str] = typer.Option(None, "--threads", help="Threads per measurement; a list such as 1,2 measures each (default 1)."),
    backends: Optional[str] = typer.Option(None, "--backends", help="Backends, comma-separated, from torch (PyTorch fp32), ort-optimum (ONNX Runtime fp32 via optimum's generate, a reference), ort-graph / ort-graph-int8 (ONNX Runtime fp32 / int8, the package's in-graph translator: the whole search in one graph), ct2 (CTranslate2 int8; skipped with a note if ctranslate2 is not installed). Default: all (with --device cuda: torch, ort-optimum and ct2)."),
    device: str = typer.Option("cpu", "--device", help="Where every backend runs: cpu, or cuda (one NVIDIA GPU: PyTorch and optimum on cuda, ONNX Runtime with CUDAExecutionProvider and IO binding, CTranslate2 int8_float16). cuda needs onnxruntime-gpu (pip install 'wdctl\\[gpu]') and a CUDA build of torch, checked before any work starts; the in-graph translator rows (ort-graph, ort-graph-int8: CPU provider only) are left out of the default backends and refused if named."),
    max_sentences: Optional[int] = typer.Option(None, "--max-sentences", help="Use only the first N test sentences (default all; with --quick 16)."),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="Timed passes per measurement, after one warm-up pass (default 3; with --quick 1)."),
    max_length: int = typer.Option(256, "--max-length", help="Longest output in tokens (also capped at 1.5 x source + 10)."),
    out: Path = typer.Option(Path("runs/bench"), "--out", help="Report directory: report.md, report.json, bleu_vs_speed.png, hypotheses/, logs/, packages/."),
    packages: Optional[Path] = typer.Option(None, "--packages", help="Cache of exported ONNX/int8/CTranslate2 packages, reused across runs (default OUT/packages, carried over to the new report by --force)."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: 16 sentences, 1 timed pass, greedy, batch 1 (explicit flags still win)."),
    force: bool = typer.Option(False, "--force", help="Replace a report directory that wdctl wrote earlier."),
) -> None:
    """Speed, size and quality of a teacher and its students in PyTorch, ONNX Runtime (fp32, int8) and CTranslate2, greedy and beam, at each batch size.

    Exports each model to ONNX fp32 and int8 (and CTranslate2 int8) once, into the package cache. Each measurement runs in its own process (warm-up, then timed passes over the same sentences); the report gives BLEU and chrF, sentences/s and target tokens/s (median, min-max), latency p50/p90 at batch 1, peak RSS, size on disk and speed-ups against the teacher, in report.md, report.json and bleu_vs_speed.png.
    """
    from wdctl.bench.run import run_bench
    from wdctl.bench.settings import make_settings

    settings = make_settings(
        teacher, student, data, out, split=split, beams=beams, batch_sizes=batch_sizes, threads=threads,
        backends=backends, device=device, max_sentences=max_sentences, repeats=repeats, max_length=max_length,
        packages=packages, force=force, quick=quick,
    )
    report = run_bench(settings)
    typer.echo(f"report written to {out / 'report.md'} ({len(report['rows'])} measurements)")
