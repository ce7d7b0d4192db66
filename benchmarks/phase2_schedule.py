"""wd's phase 2 from a finished phase 1 under another schedule: what the learning-rate restart costs.

    .venv/bin/python benchmarks/phase2_schedule.py PHASE1_STUDENT --out DIR [--lr 7e-4] [--warmup 100]
        [--steps 500] [--teacher examples/teacher] [--data examples/data/bible]
        [--distill-cache runs/plateau/distill-cache] [--eval-sentences 500] [--threads 2] [--kd-weight W]

PHASE1_STUDENT is the student `wdctl compress --method wd` materializes after phase 1
(RUN.run/phase1/student). It trains as compress's phase 2 does (`wdctl.passes.training.train`
with compress's phase-2 defaults, the pad row frozen, seed 1) on the plateau recipe's data: the
original pairs ∪ the teacher's beam-4 translations (from the distillation cache, as `compress
--onnx-distill --distill-cache` reads it), with dev BLEU (greedy) every 250 steps in
DIR/log.jsonl. With the defaults it is compress's own phase 2; DIR resumes, and a larger --steps
trains on (inverse-sqrt). --kd-weight adds the word-level KL term to the teacher's distribution
(TrainConfig.kd_weight; the teacher runs a forward pass each step). PHASE1_STUDENT may be any
student of the teacher, e.g. a finished run's model directory, to train it on.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    from wdctl.config import DEFAULT_PHASE2
    from wdctl.core.corpus import read_parallel
    from wdctl.export.build import OnnxTeacher
    from wdctl.passes.distill import distill
    from wdctl.passes.marian import freeze_pad_row, load_marian
    from wdctl.passes.training import train
    from wdctl.passes.translate import dev_bleu_evaluator
    from wdctl.passes.vocab import encode_pairs
    from wdctl.recipes.compress import MAX_LENGTH

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lr", type=float, default=DEFAULT_PHASE2.lr)
    parser.add_argument("--warmup", type=int, default=DEFAULT_PHASE2.warmup)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--teacher", default=str(REPO / "examples" / "teacher"))
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "bible"))
    parser.add_argument("--distill-cache", default=str(REPO / "runs" / "plateau" / "distill-cache"))
    parser.add_argument("--eval-sentences", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kd-weight", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    train_pairs = read_parallel(args.data, "train")
    distilled = distill(args.teacher, train_pairs, args.distill_cache, beams=4, batch_size=32, max_length=MAX_LENGTH,
                        length_penalty=1.0, backend=OnnxTeacher(), threads=args.threads, progress=False)
    teacher, tokenizer = load_marian(args.teacher)
    teacher.requires_grad_(False)
    examples, _ = encode_pairs(tokenizer, distilled.training_pairs(train_pairs), MAX_LENGTH)
    model, _ = load_marian(args.student, with_tokenizer=False)
    freeze_pad_row(model)
    cfg = replace(DEFAULT_PHASE2, lr=args.lr, warmup=args.warmup, max_steps=args.steps, eval_every=250,
                  plateau_patience=0, threads=args.threads, kd_weight=args.kd_weight)
    evaluate = dev_bleu_evaluator(tokenizer, read_parallel(args.data, "dev")[: args.eval_sentences], beams=1)
    result = train(model, examples, cfg, args.out, pad_id=model.config.pad_token_id,
                   start_id=model.config.decoder_start_token_id, evaluate=evaluate,
                   teacher=teacher if args.kd_weight > 0 else None, desc="phase2")
    print({"steps": result.steps, "dev_bleu": [(r["step"], r["dev_bleu"]) for r in result.history if "dev_bleu" in r]})


if __name__ == "__main__":
    main()
