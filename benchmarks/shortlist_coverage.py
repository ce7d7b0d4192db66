"""How much of the target side a lexical shortlist covers, and how large it is, by its sizes.

Builds `wdctl.passes.shortlist` shortlists from the bundled training pairs for a grid of
(frequent, per-source) sizes and reports, on the dev pairs decoded 1 and 32 sentences at a time,
the share of reference target tokens inside their batch's shortlist (a lower bound for the
model's own outputs, which are closer to the training targets than human references are) and the
mean shortlist size against the full vocabulary. No decoding: this picks the sizes worth timing.

    python benchmarks/shortlist_coverage.py [--teacher examples/teacher] [--data examples/data/bible]
    python benchmarks/shortlist_coverage.py --union examples/teacher/shortlist.json

With --union: the rows a built shortlist gives a search (its union, specials included, padded
to 8, as the translator's k) over the test sources in length-sorted searches of 1, 4 and 16
sentences, as `PackageTranslator` groups them: mean, 95th percentile and largest.
"""

import argparse
import itertools
import json
from pathlib import Path

import torch

from wdctl.core.corpus import read_parallel
from wdctl.passes.marian import load_marian
from wdctl.passes.shortlist import Shortlist, build_shortlist, coverage
from wdctl.passes.vocab import encode_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="examples/teacher")
    ap.add_argument("--data", default="examples/data/bible")
    ap.add_argument("--frequent", default="128,256,512")
    ap.add_argument("--per-source", default="8,16,32,64")
    ap.add_argument("--union", type=Path, help="a shortlist.json: print its union sizes instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    _, tokenizer = load_marian(args.teacher)
    if args.union:
        return union_sizes(Shortlist.load(args.union), tokenizer, args.data)
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


def union_sizes(shortlist: Shortlist, tokenizer, data: str) -> None:
    import numpy as np

    sources = tokenizer([s for s, _ in read_parallel(data, "test")])["input_ids"]
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    always = [tokenizer.pad_token_id, tokenizer.eos_token_id]
    print("| sentences a search | mean rows | p95 | max |\n|---:|---:|---:|---:|")
    for n in (1, 4, 16):
        sizes = [len(shortlist.candidates([t for i in order[k:k + n] for t in sources[i]], always, 8))
                 for k in range(0, len(order), n)]
        print(f"| {n} | {np.mean(sizes):.0f} | {int(np.quantile(sizes, 0.95))} | {max(sizes)} |")


if __name__ == "__main__":
    main()
