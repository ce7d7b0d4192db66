"""`wdctl teacher train`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from wdctl.app import app
from wdctl.commands.options import (AccumOpt, ConfigOpt, DeviceOpt, ForceOpt, LrOpt, MaxMinutesOpt, MaxStepsOpt,
                                    MaxTokensOpt, NprocOpt, PrecisionOpt, SeedOpt, ThreadsOpt, WarmupOpt,
                                    train_overrides)
from wdctl.passes.presets import describe_presets  # torch-free: `--help` imports no torch

teacher_app = typer.Typer(help="Train a teacher translation model from scratch.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")


@teacher_app.command("train")
def teacher_train(
    ctx: typer.Context,
    data: str = typer.Option(..., "--data", help="Corpus directory (with train/dev/test splits), a TSV file, or SRC,TGT text files."),
    out: Path = typer.Option(..., "--out", help="Output MarianMT directory (loadable by transformers)."),
    preset: str = typer.Option("cpu", "--preset", help=f"Architecture and schedule. {describe_presets()}."),
    dev: Optional[str] = typer.Option(None, "--dev", help="Dev data for BLEU during training (default: the corpus directory's dev split)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Joint SentencePiece vocabulary size (default per preset)."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Checkpoints, logs and metrics (default: OUT.run). Rerun to resume."),
    config: Optional[Path] = ConfigOpt,
    max_steps: Optional[int] = MaxStepsOpt,
    max_minutes: Optional[float] = MaxMinutesOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    accum: Optional[int] = AccumOpt,
    lr: Optional[float] = LrOpt,
    warmup: Optional[int] = WarmupOpt,
    seed: Optional[int] = SeedOpt,
    threads: Optional[int] = ThreadsOpt,
    device: Optional[str] = DeviceOpt,
    precision: Optional[str] = PrecisionOpt,
    nproc: Optional[int] = NprocOpt,
    force: bool = ForceOpt,
) -> None:
    """Train a joint subword vocabulary and a MarianMT teacher; report dev/test BLEU.

    Label-smoothed cross-entropy, Adam(0.9, 0.98), inverse-sqrt warm-up, token batches,
    checkpoints that resume after Ctrl-C (rerun the same command), and averaging of the
    last checkpoints. `--nproc N` (or torchrun) trains with N data-parallel processes.
    """
    from wdctl.config import TEACHER_SCHEDULES, read_yaml, train_config
    from wdctl.core.errors import InputError
    from wdctl.launch import handed_to_torchrun
    from wdctl.recipes.teacher import train_teacher

    if preset not in TEACHER_SCHEDULES:
        raise InputError(f"unknown teacher preset '{preset}' (choose from {', '.join(TEACHER_SCHEDULES)})")
    cfg = train_config(TEACHER_SCHEDULES[preset], read_yaml(config), str(config or "config"))
    cfg = train_config(cfg, train_overrides(max_steps, max_minutes, max_tokens, accum, lr, warmup, seed, threads,
                                            device, precision))
    if handed_to_torchrun(nproc, ctx.obj["argv"], (cfg.accum,)):
        return
    metrics = train_teacher(data, out, preset, cfg, run_dir=run_dir, dev=dev, vocab_size=vocab_size, force=force)
    if not metrics:  # a torchrun worker other than rank 0
        return
    typer.echo(f"teacher written to {out}")
    for key, value in metrics.items():
        typer.echo(f"  {key}: {value}")
