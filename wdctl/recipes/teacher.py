"""`wdctl teacher train`: joint vocabulary + a MarianMT teacher trained from scratch.

Writes a standard Hugging Face directory at `out` and keeps vocabulary, checkpoints, logs and
metrics in a run directory (default `OUT.run`), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from wdctl.core.atomic import atomic_dir, check_output_dir, run_dir_of
from wdctl.core.corpus import read_parallel, require_pairs
from wdctl.core.errors import InputError
from wdctl.core.runinfo import versions, write_json
from wdctl.passes.distributed import Distributed, check_accum, distributed
from wdctl.passes.marian import TEACHER_PRESETS, build_teacher, save_marian
from wdctl.passes.memory import training_peak
from wdctl.passes.phases import check_memory
from wdctl.passes.shortlist import FILE as SHORTLIST_FILE
from wdctl.passes.training import TrainConfig, train
from wdctl.passes.translate import dev_bleu_evaluator, torch_bleu
from wdctl.passes.vocab import encode_pairs, train_vocabulary
from wdctl.recipes.shortlist import model_shortlist


def load_or_train_vocab(pairs, vocab_dir: Path, vocab_size: int, seed: int, dist: Distributed = Distributed()):
    """The run's vocabulary: trained once (by rank 0 under torchrun), then loaded by every rank."""
    if dist.is_main and not (vocab_dir / "vocab.json").is_file():
        train_vocabulary(pairs, vocab_dir, vocab_size, seed)
    dist.barrier()
    return AutoTokenizer.from_pretrained(vocab_dir)


def held_out(data: str, split: str, explicit: str | None):
    if explicit:
        return read_parallel(explicit, split)
    return read_parallel(data, split) if Path(data).is_dir() else None


def train_teacher(
    data: str,
    out: Path,
    preset: str,
    cfg: TrainConfig,
    run_dir: Path | None = None,
    dev: str | None = None,
    vocab_size: int | None = None,
    eval_sentences: int = 500,
    final_beams: int = 4,
    force: bool = False,
) -> dict:
    """Train a teacher and return its metrics (dev/test BLEU at greedy and `final_beams`).

    Under `torchrun` every rank trains its share of each batch; rank 0 alone trains the
    vocabulary, writes files, scores dev/test and returns the metrics (the others return {})."""
    if preset not in TEACHER_PRESETS:
        raise InputError(f"unknown teacher preset '{preset}' (choose from {', '.join(TEACHER_PRESETS)})")
    out = Path(out)
    check_output_dir(out, force)
    cfg = cfg.validate()
    dist = distributed(cfg.device)
    check_accum(cfg.accum, dist.world, "teacher")
    run_dir = Path(run_dir) if run_dir else run_dir_of(out)
    train_pairs = require_pairs(read_parallel(data, "train"), 2, str(data))
    dev_pairs = held_out(data, "dev", dev)
    test_pairs = read_parallel(data, "test") if Path(data).is_dir() else None

    tokenizer = load_or_train_vocab(
        train_pairs, run_dir / "vocab", vocab_size or TEACHER_PRESETS[preset].vocab_size, cfg.seed, dist
    )
    examples, _ = encode_pairs(tokenizer, train_pairs, max_length=256)
    torch.manual_seed(cfg.seed)  # the initial weights depend on the seed alone
    model = build_teacher(preset, len(tokenizer))
    # the resource guard: the model, its gradients and Adam's moments, and a --max-tokens batch
    memory = training_peak(model.config, cfg.max_tokens, cfg.precision, model=4 * 4 * model.num_parameters())
    check_memory({"teacher training": sum(memory.values())})
    if dist.is_main:
        write_json(run_dir / "config.json", {"data": str(data), "preset": preset, "train": asdict(cfg),
                                             "processes": dist.world, "vocab_size": len(tokenizer),
                                             "versions": versions()})
    evaluate = dev_bleu_evaluator(tokenizer, dev_pairs[:eval_sentences]) if dev_pairs else None
    result = train(model, examples, cfg, run_dir, pad_id=model.config.pad_token_id,
                   start_id=model.config.decoder_start_token_id, evaluate=evaluate, desc=f"teacher[{preset}]")
    if not dist.is_main:
        return {}

    metrics = {"steps": result.steps, "train_minutes": round(result.train_seconds / 60, 1),
               "memory_estimate_mb": round(sum(memory.values()) / 2**20),
               "peak_rss_mb": round(result.peak_rss_mb), "parameters": model.num_parameters()}
    for name, pairs in (("dev", dev_pairs), ("test", test_pairs)):
        if pairs:
            metrics.update(torch_bleu(model, tokenizer, pairs, sorted({1, final_beams}), name, progress=True))
    with atomic_dir(out, force=force) as tmp:
        save_marian(model, tokenizer, tmp)
        # the shortlist of its training pairs (`wdctl export` builds it into the translator;
        # `wdctl shortlist --translations` can add the teacher's own translations later)
        model_shortlist(tokenizer, examples).save(tmp / SHORTLIST_FILE)
    write_json(run_dir / "metrics.json", metrics)
    return metrics
