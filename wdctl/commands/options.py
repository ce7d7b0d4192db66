"""Typer options shared by the training commands, so every command spells them the same way."""

from __future__ import annotations

import typer

ConfigOpt = typer.Option(None, "--config", help="YAML file of training options (keys of TrainConfig).")
MaxStepsOpt = typer.Option(None, "--max-steps", help="Optimizer steps to train.")
MaxMinutesOpt = typer.Option(None, "--max-minutes", help="Stop after this many minutes of training (0 = no limit).")
MaxTokensOpt = typer.Option(None, "--max-tokens", help="Tokens per micro-batch.")
AccumOpt = typer.Option(None, "--accum", help="Micro-batches per optimizer step (gradient accumulation).")
LrOpt = typer.Option(None, "--lr", help="Peak learning rate of the inverse-sqrt schedule.")
WarmupOpt = typer.Option(None, "--warmup", help="Warm-up steps of the inverse-sqrt schedule.")
SeedOpt = typer.Option(None, "--seed", help="Random seed (data order, initialisation, dropout).")
ThreadsOpt = typer.Option(None, "--threads", help="Torch intra-op threads (default: torch's choice).")
ForceOpt = typer.Option(False, "--force", help="Replace an output directory that wdctl wrote earlier.")


def train_overrides(max_steps, max_minutes, max_tokens, accum, lr, warmup, seed, threads) -> dict:
    return {"max_steps": max_steps, "max_minutes": max_minutes, "max_tokens": max_tokens, "accum": accum,
            "lr": lr, "warmup": warmup, "seed": seed, "threads": threads}
