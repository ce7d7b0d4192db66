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
    phase2_steps: int | None = typer.Option(None, "--phase2-steps", help="Phase-2 steps of the student (default 450; the time goes here: ~0.7 s a step on 2 cores with bf16). 450 keeps the whole job near 12 min; 1800 takes about 30 min and ends about 2 BLEU below the teacher at beam 4 (README). A finished student with another budget is not reused."),
    train_teacher: bool = typer.Option(False, "--train-teacher", help="Train a small 3+3 teacher for 450 steps first instead of using the bundled one (not a usable translator; shows that path)."),
    smoke: bool = typer.Option(False, "--smoke", hidden=True, help="Seconds-long run of every stage (tests)."),
) -> None:
    """Compress the bundled teacher with WD into the paper's SMALL student, export and quantize both, and benchmark them: writes OUT/report.md.

    The bundled teacher (examples/teacher: 6+6 layers, d 256, trained on the bundled English-Spanish Bible corpus) translates the sources of 3,000 training pairs (beam 4); the student (the teacher's encoder, a 2-layer decoder) trains on the original and translated pairs for 150 + 450 steps (phase 1: generator, phase 2: student, `--phase2-steps`; bf16 autocast on a CPU with hardware bf16, fp32 elsewhere); both are exported to ONNX (fp32, int8, with the in-graph search), and the bench times the teacher against the student in onnxruntime int8, greedy and beam 4, batch 1 and 32, over the first 300 test sentences (`wdctl bench` adds CTranslate2 and the other backends). Budgets are steps: a busy machine takes longer but ends at the same student.

    Finished stages (data, teacher, student, packages, bench) are reused when the command is run again; an interrupted training stage resumes from its checkpoints.
    """
    from dataclasses import replace

    from wdctl.demo import DEMO, SMOKE, run_demo

    plan = SMOKE if smoke else replace(DEMO, train_teacher=train_teacher, phase_steps=(DEMO.phase_steps[0], DEMO.phase_steps[1] if phase2_steps is None else phase2_steps))
    report = run_demo(out, threads=threads, train_threads=train_threads, plan=plan,
                      log=lambda text: typer.echo(text, err=True))
    typer.echo(f"report: {report}")
