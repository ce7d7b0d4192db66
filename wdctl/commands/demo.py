"""`wdctl demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from wdctl.app import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Directory for every stage's output; rerun the same command to resume."),
    threads: int = typer.Option(1, "--threads", help="Threads per benchmark measurement."),
    train_threads: int = typer.Option(0, "--train-threads", help="Torch threads for training and distillation (0 = all cores)."),
    smoke: bool = typer.Option(False, "--smoke", hidden=True, help="Seconds-long run of every stage (tests)."),
) -> None:
    """Train a teacher on the bundled English-Spanish corpus, compress it with WD to `tiny`, export and quantize both, and benchmark them: writes OUT/report.md (18.6 minutes on an idle 2-core CPU, install included).

    It uses a much shorter schedule than the full recipe, to fit in ~20 minutes: the CPU teacher (`--preset cpu`) trains for 6 minutes instead of the recipe's 55, the student for 2 + 2 minutes on 4,000 greedily distilled sentences instead of 2000 + 2000 steps on the whole corpus, and the bench times one pass over 100 test sentences (greedy and beam 4, batch 1 and 32) in PyTorch, ONNX Runtime fp32 and int8, and CTranslate2 (the optimum reference row is left out; `wdctl bench` runs it). BLEU is therefore far below what the full recipe reaches; the speed and size comparisons are the point.

    Finished stages (data, teacher, student, packages, bench) are reused when the command is run again; an interrupted training stage resumes from its checkpoints.
    """
    from wdctl.demo import DEMO, SMOKE, run_demo

    report = run_demo(out, threads=threads, train_threads=train_threads, plan=SMOKE if smoke else DEMO,
                      log=lambda text: typer.echo(text, err=True))
    typer.echo(f"report: {report}")
