"""Translation speed against the number of sentences one search runs at once, for a package's
in-graph translator and, with --ct2, a CTranslate2 model of the same system:

    .venv/bin/python benchmarks/search_rows.py PACKAGE [--ct2 CT2_DIR] [--beams 4]
        [--batch-sizes 1,4,8,16,32] [--sentences 256] [--threads 1] [--no-amx]

PACKAGE is an ONNX package with `translator.onnx` (`wdctl export`, or the bench's package cache);
CT2_DIR a `ct2-transformers-converter --quantization int8` output. The first --sentences test
sentences of the bundled corpus run in length-sorted batches of each size, one search per
batch (the translator's `rows_per_run` limit off; CTranslate2 through the bench's own loader,
`max_batch_size` 0), with wdctl's per-batch output limit; one warm-up batch, then one timed
pass per size. Prints the seconds and target tokens per second (EOS not counted, the bench's
count) per size. This is the measurement behind `PackageTranslator`'s `rows_per_run` default;
with --no-amx (the whole process refused Intel AMX, as `wdctl translate` does for searches of at
most 4 rows), the one behind `export.session.AMX_SLOWER_UP_TO_ROWS`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package")
    parser.add_argument("--ct2", default=None)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-amx", action="store_true",
                        help="refuse this process Intel AMX first (`wdctl.core.amx`), CTranslate2 included")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.no_amx:
        from wdctl.core import amx

        if not amx.deny_amx():
            print("--no-amx: AMX could not be refused here (not Linux x86-64, no seccomp, or already granted)")
            return 1

    from wdctl.core.corpus import read_parallel
    from wdctl.export.translator import PackageTranslator

    texts = [s for s, _ in read_parallel(REPO / "examples" / "data" / "bible", "test")][:args.sentences]
    package = PackageTranslator(args.package, threads=args.threads, rows_per_run=0)
    tokenizer = package.tokenizer
    systems = {"onnxruntime (in-graph)": lambda s, n: package.translate(s, beams=args.beams, batch_size=n)}
    if args.ct2:  # the bench's own CTranslate2 rows: length-sorted batches, max_batch_size 0
        from wdctl.bench.worker import LOADERS

        spec = {"model": args.ct2, "device": "cpu", "threads": args.threads, "beams": args.beams,
                "max_length": 256, "length_penalty": 1.0}
        systems["CTranslate2"] = LOADERS["ct2"](spec, tokenizer)

    print(f"{args.package}: beams {args.beams}, {len(texts)} sentences, {args.threads} thread(s)\n")
    print("| system | sentences per search | rows (x beams) | seconds | tok/s |")
    print("|---|---:|---:|---:|---:|")
    for name, translate in systems.items():
        translate(texts[:8], 8)  # warm-up
        for size in (int(x) for x in args.batch_sizes.split(",")):
            start = time.perf_counter()
            out = translate(texts, size)
            seconds = time.perf_counter() - start
            tokens = sum(len(x) for x in tokenizer(text_target=out, add_special_tokens=False)["input_ids"])
            print(f"| {name} | {size} | {size * args.beams} | {seconds:.2f} | {tokens / seconds:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
