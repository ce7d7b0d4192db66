"""How much of the target side a lexical shortlist covers, and how large it is, by its sizes.

Builds `wdctl.passes.shortlist` shortlists from the bundled training pairs for a grid of
(frequent, per-source) sizes and reports, on the dev pairs decoded 1 and 32 sentences at a time,
the share of reference target tokens inside their batch's shortlist (a lower bound for the
model's own outputs, which are closer to the training targets than human references are) and the
mean shortlist size against the full vocabulary. No decoding: this picks the sizes worth timing.

    python benchmarks/shortlist_coverage.py [--teacher examples/teacher] [--data examples/data/bible]
"""

import argparse
import itertools
import json

import torch

from wdctl.core.corpus import read_parallel
from wdctl.passes.marian import load_marian
from wdctl.passes.shortlist import build_shortlist, coverage
from wdctl.passes.vocab import encode_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="examples/teacher")
    ap.add_argument("--data", default="examples/data/bible")
    ap.add_argument("--frequent", default="128,256,512")
    ap.add_argument("--per-source", default="8,16,32,64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, tokenizer = load_marian(args.teacher)
    train, _ = encode_pairs(tokenizer, read_parallel(args.data, "train"), 256)
    dev, _ = encode_pairs(tokenizer, read_parallel(args.data, "dev"), 256)
    vocab = len(tokenizer)
    special = [tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    rows = []
    print("| frequent | per source | coverage bs 1 | mean size bs 1 | coverage bs 32 | mean size bs 32 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for f, k in itertools.product([int(x) for x in args.frequent.split(",")], [int(x) for x in args.per_source.split(",")]):
        shortlist = build_shortlist(train, vocab, vocab, frequent=f, per_source=k, exclude=[tokenizer.pad_token_id])
        one, many = coverage(shortlist, dev, 1, special), coverage(shortlist, dev, 32, special)
        rows.append({"frequent": f, "per_source": k, "batch_1": one, "batch_32": many, "vocab": vocab})
        print(f"| {f} | {k} | {one['token_coverage']:.4f} | {one['mean_size']:.0f} ({one['mean_size'] / vocab:.1%}) | "
              f"{many['token_coverage']:.4f} | {many['mean_size']:.0f} ({many['mean_size'] / vocab:.1%}) |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
