"""Seconds per training step of a model in fp32 and CPU bf16 autocast, with SDPA and with eager
attention: the measurement behind `--precision auto` and the eager attention that CPU bf16 uses.

    .venv/bin/python benchmarks/train_precision.py MODEL_DIR [--tokens 2500] [--steps 6] [--threads 2]

MODEL_DIR is a MarianMT directory (the bundled teacher, or a student such as runs/demo/wd-small).
One batch of about --tokens tokens from the middle of the bundled training split (length-sorted),
forward + label-smoothed loss + backward + Adam step, each setting run twice interleaved; prints
the median seconds per step of each setting (the first step of each run is warm-up, not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--tokens", type=int, default=2500)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from wdctl.core.corpus import read_parallel
    from wdctl.core.runinfo import native_bf16
    from wdctl.passes.marian import load_marian
    from wdctl.passes.training import attention_implementation, collate, sequence_loss
    from wdctl.passes.vocab import encode_pairs

    torch.set_num_threads(args.threads)
    model, tokenizer = load_marian(args.model)
    examples, _ = encode_pairs(tokenizer, read_parallel(REPO / "examples" / "data" / "bible", "train")[:4000], 256)
    examples.sort(key=lambda e: max(len(e[0]), len(e[1])))
    middle = examples[len(examples) // 2 :]
    longest = max(len(s) for s, t in middle[:64])
    batch = collate(middle[: max(1, args.tokens // longest)], model.config.pad_token_id, model.config.decoder_start_token_id)
    labels = batch.pop("labels")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    model.train()

    def run(precision: str, attention: str) -> list[float]:
        times = []
        with attention_implementation([model], attention):
            for _ in range(args.steps + 1):
                started = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    loss = sequence_loss(model(**batch).logits, labels, 0.1)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                times.append(time.perf_counter() - started)
        return times[1:]

    settings = [("fp32", "sdpa"), ("fp32", "eager"), ("bf16", "sdpa"), ("bf16", "eager")]
    results = {s: [] for s in settings}
    for _ in range(2):
        for s in settings:
            results[s] += run(*s)
    print(f"{args.model}: batch {tuple(batch['input_ids'].shape)} source, {tuple(labels.shape)} target, "
          f"{args.threads} threads; hardware bf16: {'yes' if native_bf16() else 'no'}")
    fp32 = statistics.median(results[("fp32", "sdpa")])
    for (precision, attention), times in results.items():
        median = statistics.median(times)
        print(f"  {precision} {attention:5s}  {median:.3f} s/step  ({fp32 / median:.2f}x fp32 sdpa)")


if __name__ == "__main__":
    main()
