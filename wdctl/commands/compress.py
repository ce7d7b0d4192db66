"""`wdctl compress` (and `wdctl inspect`, its plan-only twin)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from wdctl.app import app
from wdctl.commands.options import (AccumOpt, DeviceOpt, ForceOpt, HiddenWeightOpt, KdWeightOpt, MaxTokensOpt,
                                    NprocOpt, PrecisionOpt, SeedOpt, ThreadsOpt)

STUDENT_HELP = (
    "Student shape: a preset or a YAML file of shape fields (encoder_layers, decoder_layers, d_model, "
    "encoder_ffn_dim, decoder_ffn_dim, encoder_attention_heads, decoder_attention_heads, optional preset). "
    "Presets: 'small' = the teacher's encoder and width with a 2-layer decoder (the paper's SMALL); "
    "'tiny' = the teacher's encoder with a 1-layer decoder at half width (the paper's TINY; a "
    "wdctl_narrow_marian model, loadable with AutoModelForSeq2SeqLM after `import wdctl`); "
    "'halved' = a standard MarianConfig, with one d_model for both sides, at half width throughout "
    "and a 1-layer decoder. "
    "The shape flags below override the preset/file."
)

StudentOpt = typer.Option("small", "--student", help=STUDENT_HELP)
EncoderLayersOpt = typer.Option(None, "--encoder-layers", help="Student encoder layers (<= the teacher's).")
DecoderLayersOpt = typer.Option(None, "--decoder-layers", help="Student decoder layers (<= the teacher's).")
DModelOpt = typer.Option(None, "--d-model", help="Student width (<= the teacher's; divisible by --heads).")
FfnDimOpt = typer.Option(None, "--ffn-dim", help="Student FFN size, encoder and decoder.")
HeadsOpt = typer.Option(None, "--heads", help="Student attention heads, encoder and decoder.")
SubsetMbOpt = typer.Option(None, "--subset-mb", help="Memory bound of one generator subset in MiB (default 256).")
GeneratorOpt = typer.Option("coherent", "--generator", help="Parameter generator form (wd): 'coherent' = one projection per student space, starting exactly at the cut-off student (default); 'release' = the paper release's per-tensor random projections.")
StartOpt = typer.Option(None, "--start", help="Which teacher slice the student starts from (wd, cut-kd; default importance): 'leading' = leading rows/columns and each group's bottom layer; 'importance' = coordinates, heads and layers ranked on a few training batches (layers by the cut student's loss); 'block-importance' = the same, layers by block importance (1 - cos(layer input, output)).")


def student_request(student: str, encoder_layers=None, decoder_layers=None, d_model=None, ffn_dim=None,
                    heads=None) -> dict:
    """--student and the shape flags as the mapping `resolve_student` takes."""
    from wdctl.config import read_yaml

    if student.endswith((".yaml", ".yml")) or Path(student).is_file():
        values = read_yaml(student)
    else:
        values = {"preset": student}
    flags = {"encoder_layers": encoder_layers, "decoder_layers": decoder_layers, "d_model": d_model,
             "encoder_ffn_dim": ffn_dim, "decoder_ffn_dim": ffn_dim,
             "encoder_attention_heads": heads, "decoder_attention_heads": heads}
    return {**values, **{k: v for k, v in flags.items() if v is not None}}


def _print_plan(result: dict) -> None:
    typer.echo(result["plan_text"])

    def gib(n: int) -> str:
        return f"{n / 2**30:.2f} GiB"

    memory = result["memory"]
    for name, phase in memory["phases"].items():
        parts = " + ".join(f"{part.replace('_', ' ')} {gib(n)}" for part, n in phase["bytes"].items() if n)
        typer.echo(f"{name.replace('phase', 'phase-')} memory estimate: {gib(phase['total_bytes'])} at --max-tokens "
                   f"{phase['max_tokens']}, {phase['precision']} (peak RSS: {parts})")
    largest = max(phase["total_bytes"] for phase in memory["phases"].values())
    typer.echo(f"available memory: {gib(memory['available_bytes'])} "
               f"({'fits' if largest <= memory['available_bytes'] else 'DOES NOT FIT'})")
    typer.echo(f"parameters: teacher {result['teacher_parameters']:,}, student {result['student_parameters']:,} "
               f"({result['student_parameters'] / result['teacher_parameters']:.2f} of the teacher), "
               f"generator {result['generator_parameters']:,}")
    if result.get("size_note"):
        typer.echo(result["size_note"])
    sizes = result.get("generator_sizes") or {}
    typer.echo("generator sizes: " + ", ".join(f"{form} {n}" for form, n in sizes.items()))


@app.command("compress")
def compress_command(
    ctx: typer.Context,
    teacher_dir: Path = typer.Argument(..., help="Teacher MarianMT directory (safetensors weights + tokenizer)."),
    data: Optional[str] = typer.Option(None, "--data", help="Training corpus: a directory with train/dev/test splits, a TSV file, or SRC,TGT text files. Test BLEU is reported when the directory has a test split."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output student MarianMT directory (loadable by transformers)."),
    student: str = StudentOpt,
    encoder_layers: Optional[int] = EncoderLayersOpt,
    decoder_layers: Optional[int] = DecoderLayersOpt,
    d_model: Optional[int] = DModelOpt,
    ffn_dim: Optional[int] = FfnDimOpt,
    heads: Optional[int] = HeadsOpt,
    generator: str = GeneratorOpt,
    start: Optional[str] = StartOpt,
    refit_output: Optional[bool] = typer.Option(None, "--refit-output/--no-refit-output", help="Refit the start's top decoder layer (its fc2, by least squares on a few teacher-forced batches) so that its output matches the teacher's last decoder layer (wd, cut-kd): a student with fewer decoder layers then starts from an output the output layer can read. Default: on for cut-kd and wd with the coherent generator."),
    method: str = typer.Option("wd", "--method", help="wd: weight distillation (phase 1 trains the parameter generator with the teacher frozen, phase 2 fine-tunes the materialized student). Baselines on the same shape, data and step budget (phase1+phase2 steps, phase-1 schedule): kd = random init, on a from-scratch schedule (warm-up 1000, gradient clipping at 1.0, peak lr 7e-4: on the other methods' warm-up of 50 it barely learns, and at 1.2e-3 TINY's encoder collapsed); cut-kd = init cut from the teacher (every r-th layer, leading rows/columns, or --start importance); cut-kd-two-phase = the same cut on wd's two schedules (warm-up restarted at phase 2)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML of training options (TrainConfig keys): top-level keys apply to both phases, 'phase1:'/'phase2:' sections to one."),
    phase1_steps: Optional[int] = typer.Option(None, "--phase1-steps", help="Phase-1 (generator) steps [300]."),
    phase2_steps: Optional[int] = typer.Option(None, "--phase2-steps", help="Phase-2 (student fine-tuning) steps at most [6000; with dev evaluations (--eval-sentences) it stops earlier, at a plateau: no gain above 0.2 BLEU over 4 evaluations 250 steps apart]."),
    phase1_lr: Optional[float] = typer.Option(None, "--phase1-lr", help="Phase-1 peak learning rate [7e-4, as the release]."),
    phase2_lr: Optional[float] = typer.Option(None, "--phase2-lr", help="Phase-2 peak learning rate [7e-4]."),
    phase1_warmup: Optional[int] = typer.Option(None, "--phase1-warmup", help="Phase-1 warm-up steps [50; kd 1000; the release uses 4000]."),
    phase2_warmup: Optional[int] = typer.Option(None, "--phase2-warmup", help="Phase-2 warm-up steps [100; the release uses 1000]."),
    max_tokens: Optional[int] = MaxTokensOpt,
    accum: Optional[int] = AccumOpt,
    kd_weight: Optional[float] = KdWeightOpt,
    hidden_weight: Optional[float] = HiddenWeightOpt,
    seed: Optional[int] = SeedOpt,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Checkpoints, logs, config and metrics (default: OUT.run). Rerun the same command to resume; finished phases are skipped, and a finished run rerun with a larger --phase2-steps trains its last phase on (inverse-sqrt schedule; its own outputs are replaced). A run dir made with other settings is refused, or started over with --force."),
    distill_cache: Optional[Path] = typer.Option(None, "--distill-cache", help="Cache of teacher translations, keyed by teacher, data and settings (default: $WDCTL_CACHE_DIR/distilled or ~/.cache/wdctl/distilled)."),
    distill_beams: int = typer.Option(4, "--distill-beams", help="Beam size of the teacher translating the training data."),
    distill_sentences: int = typer.Option(0, "--distill-sentences", help="Teacher-translate only the first N training sources (0 = all); the students still train on every original pair plus those N translations."),
    onnx_distill: bool = typer.Option(False, "--onnx-distill", help="Translate the training data with the teacher's in-graph ONNX translator (onnxruntime, CPU; exported once into the cache) instead of PyTorch: the same output, faster on CPU (one batch per thread)."),
    eval_sentences: int = typer.Option(200, "--eval-sentences", help="Dev sentences translated (greedy) at each evaluation during training; 0 = none."),
    test_sentences: int = typer.Option(0, "--test-sentences", help="Cap on test sentences for the final BLEU (0 = all)."),
    subset_mb: Optional[int] = SubsetMbOpt,
    export: bool = typer.Option(True, "--export/--no-export", help="Also write the ONNX fp32 package OUT.onnx/ and the quantized package OUT.<mode>/ (e.g. OUT.int8/), whose test BLEU is scored again."),
    quantize: str = typer.Option("int8", "--quantize", help="Quantization of the exported package (a mode of `wdctl export`, e.g. int8), or 'none'."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the weight-grouping plan (classes, instances, groups, generator parameters and memory, subsets) and each phase's peak-memory estimate at its --max-tokens; train nothing."),
    threads: Optional[int] = ThreadsOpt,
    device: Optional[str] = DeviceOpt,
    precision: Optional[str] = PrecisionOpt,
    nproc: Optional[int] = NprocOpt,
    force: bool = ForceOpt,
) -> None:
    """Compress a MarianMT teacher into a smaller student by Weight Distillation (or a baseline).

    Pipeline: the teacher translates the training sources (beam search, cached) → training on original ∪ distilled pairs with label-smoothed CE (ε 0.1), Adam(0.9, 0.98) and inverse-sqrt warm-up → a standard MarianMT directory at OUT → test BLEU (greedy and beam 4) → ONNX fp32 and int8 packages.

    Each phase checkpoints into the run directory: after Ctrl-C, rerun the same command to resume. `--nproc N` (or torchrun) distills and trains with N data-parallel processes; checkpoints resume with any N. Per-phase wall time and peak memory go to OUT.run/metrics.json. Defaults are CPU-sized and follow the plateau runs on the bundled teacher (examples/results/plateau): the importance start with its top decoder layer refitted; phase 1: 300 steps, lr 7e-4, warm-up 50; phase 2: up to 6000 steps, lr 7e-4, warm-up 100, stopping at a dev-BLEU plateau; 2500-token batches; kd (random init): warm-up 1000 and clipping at 1.0. The paper's release uses warm-up 4000 and 1000.
    """
    from wdctl.config import default_phases, phase_configs, read_yaml
    from wdctl.launch import handed_to_torchrun
    from wdctl.recipes.compress import CompressSettings, compress, recommended_start

    options = read_yaml(config)
    shared = {"max_tokens": max_tokens, "accum": accum, "kd_weight": kd_weight, "hidden_weight": hidden_weight,
              "seed": seed, "device": device, "precision": precision}
    per_phase = {"phase1": {"max_steps": phase1_steps, "lr": phase1_lr, "warmup": phase1_warmup},
                 "phase2": {"max_steps": phase2_steps, "lr": phase2_lr, "warmup": phase2_warmup}}
    p1, p2 = phase_configs(options, base=default_phases(method))
    p1, p2 = phase_configs({**shared, **{k: {n: v for n, v in d.items() if v is not None} for k, d in per_phase.items()}},
                           base=(p1, p2))
    if not dry_run and handed_to_torchrun(nproc, ctx.obj["argv"], (p1.accum, p2.accum)):
        return
    default_start, default_refit = recommended_start(method, generator)
    result = compress(CompressSettings(
        teacher_dir, data, out,
        student=student_request(student, encoder_layers, decoder_layers, d_model, ffn_dim, heads),
        method=method, generator=generator, start=start or default_start,
        refit_output=default_refit if refit_output is None else refit_output, phase1=p1, phase2=p2, run_dir=run_dir, force=force, export=export, quantize=quantize,
        dry_run=dry_run,
        cache_dir=distill_cache, distill_beams=distill_beams, distill_sentences=distill_sentences,
        fast_distill=onnx_distill,
        eval_sentences=eval_sentences, test_sentences=test_sentences,
        subset_bytes=subset_mb * 2**20 if subset_mb else None, threads=threads or 0,
    ))
    if not result:  # a torchrun worker other than rank 0
        return
    if dry_run:
        _print_plan(result)
        typer.echo(f"method {method}; dry run: nothing trained")
        return
    typer.echo(f"student written to {out}")
    for key in ("test_bleu_beam1", "test_bleu_beam4", "bleu_signature", "total_wall_seconds"):
        if key in result:
            typer.echo(f"  {key}: {result[key]}")
    for name, info in result.get("phases", {}).items():
        typer.echo(f"  {name}: {info['steps']} steps, {info['train_seconds']:.0f} s training, "
                   f"peak RSS {info['peak_rss_mb']:.0f} MB")
    for name, path in result.get("outputs", {}).items():
        if name != "model":
            typer.echo(f"  {name}: {path}")


@app.command("inspect")
def inspect_command(
    teacher_dir: Path = typer.Argument(..., help="Teacher MarianMT directory (only config.json is read)."),
    student: str = StudentOpt,
    encoder_layers: Optional[int] = EncoderLayersOpt,
    decoder_layers: Optional[int] = DecoderLayersOpt,
    d_model: Optional[int] = DModelOpt,
    ffn_dim: Optional[int] = FfnDimOpt,
    heads: Optional[int] = HeadsOpt,
    subset_mb: Optional[int] = SubsetMbOpt,
    generator: str = GeneratorOpt,
    max_tokens: Optional[int] = MaxTokensOpt,
    precision: Optional[str] = PrecisionOpt,
    kd_weight: Optional[float] = KdWeightOpt,
    hidden_weight: Optional[float] = HiddenWeightOpt,
) -> None:
    """Print the weight-grouping plan for a student of this teacher (same as `compress --dry-run`),
    with each phase's peak-memory estimate at this --max-tokens (default: compress's 2500) and with
    the loss terms that read the teacher on every step (--kd-weight, --hidden-weight)."""
    from wdctl.config import phase_configs
    from wdctl.recipes.compress import CompressSettings, compress

    phase1, phase2 = phase_configs({"max_tokens": max_tokens, "precision": precision, "kd_weight": kd_weight,
                                    "hidden_weight": hidden_weight})
    result = compress(CompressSettings(
        teacher_dir, None, None, dry_run=True, generator=generator,
        student=student_request(student, encoder_layers, decoder_layers, d_model, ffn_dim, heads),
        subset_bytes=subset_mb * 2**20 if subset_mb else None, phase1=phase1, phase2=phase2))
    _print_plan(result)
