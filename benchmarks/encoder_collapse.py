"""Does a student's encoder still tell its positions apart? (No training.)

For each checkpoint, the standard deviation across positions (each sentence's mean over its
positions removed) of every encoder layer's output on the first dev sources: in a healthy
encoder every layer keeps it of the order of 1 (its outputs are layer-normalised), a collapsed one
(every position the same vector) drives it towards 0 layer by layer, and then the decoder can only
learn a language model. Found on TINY kd
from random weights (examples/results/tiny-start/README.md).

    python benchmarks/encoder_collapse.py --model RUN/train/student [--random] RUN/train/checkpoints/step-*
"""

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer

from wdctl.core.corpus import read_parallel
from wdctl.passes.marian import load_marian
from wdctl.passes.narrow_marian import build_model
from wdctl.passes.training import load_trainable


def position_spread(model, batch: dict) -> list[float]:
    """Per encoder layer (embedding first), the std of its output across positions."""
    with torch.no_grad():
        states = model.model.encoder(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    spreads = []
    for h in states:
        mean = (h * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        spreads.append(((h - mean).pow(2) * mask).sum().div(mask.sum() * h.shape[-1]).sqrt().item())
    return spreads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="*", type=Path, help="checkpoint directories (trainable.safetensors)")
    ap.add_argument("--random", action="store_true", help="also a randomly initialised model of that shape (seed 1)")
    ap.add_argument("--model", type=Path, required=True, help="a model directory of the student's shape")
    ap.add_argument("--teacher", type=Path, default=Path("examples/teacher"), help="its tokenizer")
    ap.add_argument("--data", default="examples/data/bible")
    ap.add_argument("--sentences", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, _ = load_marian(args.model, with_tokenizer=False)
    tokenizer = AutoTokenizer.from_pretrained(args.teacher)
    sources = [source for source, _ in read_parallel(args.data, "dev")[: args.sentences]]
    batch = tokenizer(sources, return_tensors="pt", padding=True)
    print("checkpoint  std across positions: embedding, encoder layer 1 ...")
    if args.random:
        torch.manual_seed(1)
        print("random  " + " ".join(f"{s:.2g}" for s in position_spread(build_model(model.config).eval(), batch)))
    model.eval()
    for checkpoint in args.checkpoints:
        load_trainable(model, checkpoint)
        print(f"{checkpoint.name}  " + " ".join(f"{s:.2g}" for s in position_spread(model, batch)))


if __name__ == "__main__":
    main()
