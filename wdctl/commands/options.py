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
ThreadsOpt = typer.Option(None, "--threads", help="Torch intra-op threads (default: torch's choice, all cores). On a machine shared with other jobs use fewer: two threads on two busy cores trained ~8x slower than one.")
ForceOpt = typer.Option(False, "--force", help="Replace an output directory that wdctl wrote earlier.")
DeviceOpt = typer.Option(None, "--device", help="Where to train: cpu, or cuda (each torchrun process takes the GPU of its LOCAL_RANK).")
KdWeightOpt = typer.Option(None, "--kd-weight", help="Weight of an extra word-level KL term to the teacher, both phases [0: the release uses none].")
HiddenWeightOpt = typer.Option(None, "--hidden-weight", help="Weight of an intermediate-state loss, both phases: the student's last decoder state against the teacher's at the coordinates the student keeps (mean squared error per token) [0: none].")
PrecisionOpt = typer.Option(None, "--precision", help="auto (bf16 on a CPU with hardware bf16: AMX or AVX-512 BF16; else fp32), fp32, or autocast bf16 / fp16 (fp16 with loss scaling; for GPUs).")
NprocOpt = typer.Option(None, "--nproc", help="Train with N processes on this machine: reruns this command under `torchrun --nproc_per_node N` (DDP; gloo on CPU, NCCL on GPU). The global batch stays the same, so --accum must be a multiple of N; checkpoints resume with any N. Same as starting wdctl with torchrun yourself.")


def train_overrides(max_steps, max_minutes, max_tokens, accum, lr, warmup, seed, threads, device=None,
                    precision=None) -> dict:
    return {"max_steps": max_steps, "max_minutes": max_minutes, "max_tokens": max_tokens, "accum": accum,
            "lr": lr, "warmup": warmup, "seed": seed, "threads": threads, "device": device, "precision": precision}
