"""Packages against each other on the same sentences: tokens/s, BLEU, and whether a sentence's
line depends on its batch. For before/after checks of the in-graph translator (e.g. a package
exported at an older commit against today's):

    .venv/bin/python benchmarks/package_speed.py PKG[:sl] PKG[:sl] ... [--settings 1x1,4x1,1x32,4x32]
        [--data examples/data/bible] [--sentences 1000] [--repeats 1] [--out FILE.json]

PKG is a package directory with `translator.onnx` (`wdctl export`); `:sl` runs it with its
shortlist, otherwise with the full vocabulary (`--no-shortlist`). A setting is BEAMSxBATCH.
Each package runs every setting in turn (packages interleaved, so a drift of the machine hits
them alike), 1 thread, after a warm-up on the first max(8, batch) sentences; tokens are the
target tokenizer's pieces of the output. The last column compares each package's lines at batch
1 with its lines at the largest batch, per beam count (identical / all).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    from wdctl.core.corpus import read_parallel
    from wdctl.core.metrics import bleu
    from wdctl.export.translator import PackageTranslator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+")
    parser.add_argument("--settings", default="1x1,4x1,1x32,4x32")
    parser.add_argument("--data", default=str(REPO / "examples" / "data" / "bible"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    pairs = read_parallel(args.data, args.split)[:args.sentences]
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    translators = {name: PackageTranslator(name.removesuffix(":sl"), threads=1, shortlist=name.endswith(":sl"))
                   for name in args.packages}
    rows, lines = [], {}
    print(f"{len(sources)} sentences, 1 thread, {args.repeats} timed pass(es); tok/s median (min-max)")
    for beams, batch in settings:
        rates: dict[str, list[float]] = {name: [] for name in translators}
        for name, translator in translators.items():
            translator.translate(sources[:max(8, batch)], beams=beams, batch_size=batch)
        for _ in range(args.repeats):
            for name, translator in translators.items():
                started = time.perf_counter()
                out = translator.translate(sources, beams=beams, batch_size=batch)
                seconds = time.perf_counter() - started
                tokens = sum(len(ids) for ids in translator.tokenizer(text_target=out)["input_ids"])
                rates[name].append(tokens / seconds)
                lines[(name, beams, batch)] = out
        for name in translators:
            row = {"package": name, "beams": beams, "batch_size": batch, "tok_s": round(statistics.median(rates[name]), 1),
                   "tok_s_range": [round(min(rates[name]), 1), round(max(rates[name]), 1)],
                   "bleu": round(bleu(lines[(name, beams, batch)], refs).score, 2)}
            rows.append(row)
            print(f"beam {beams} batch {batch:<3d} {name:48s} {row['tok_s']:8.1f} tok/s "
                  f"({row['tok_s_range'][0]:.0f}-{row['tok_s_range'][1]:.0f})  BLEU {row['bleu']:.2f}", flush=True)
    same = {}
    for (name, beams, batch), a in lines.items():
        largest = max(b for n, m, b in lines if (n, m) == (name, beams))
        if batch == 1 and largest > 1:
            b = lines[(name, beams, largest)]
            same[f"{name} beam {beams}"] = f"{sum(x == y for x, y in zip(a, b))}/{len(a)}"
            print(f"{name} beam {beams}: lines at batch 1 = at batch {largest}: {same[f'{name} beam {beams}']}")
    if args.out:
        args.out.write_text(json.dumps({"command": "python benchmarks/package_speed.py " + " ".join(argv or sys.argv[1:]),
                                        "rows": rows, "identical_lines": same}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
