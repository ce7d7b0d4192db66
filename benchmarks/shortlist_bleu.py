"""A model's BLEU and speed with candidate shortlists, onnxruntime int8 in-graph, all test pairs:

    .venv/bin/python benchmarks/shortlist_bleu.py MODEL SHORTLIST.json ... [--beams 4] [--batch-size 1]
        [--data examples/data/bible]

Each SHORTLIST.json (`wdctl shortlist MODEL ... --out FILE`) is built into MODEL's translator
(int8, as `wdctl export` builds it) and the test split is translated one batch of --batch-size
at a time (batch 1: one sentence a call); prints sentences per second and BLEU. Sizes worth
trying without a full bench run; `wdctl bench` gives the table with the full-vocabulary rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    import sacrebleu

    from wdctl.core.corpus import read_parallel
    from wdctl.export.translator import PackageTranslator, build_translator, marian_weights, quantize_translator
    from wdctl.passes.marian import load_marian
    from wdctl.passes.shortlist import Shortlist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("shortlists", type=Path, nargs="+")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--data", default="examples/data/bible")
    args = parser.parse_args(argv)
    model, tokenizer = load_marian(args.model)
    test = read_parallel(args.data, "test")
    sources, refs = [s for s, _ in test], [t for _, t in test]
    weights = marian_weights(model)
    for path in args.shortlists:
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp)
            tokenizer.save_pretrained(package)
            build_translator(weights, package / "fp32.onnx", shortlist=Shortlist.load(path))
            quantize_translator(package / "fp32.onnx", package / "translator.onnx")
            translator = PackageTranslator(package, threads=1)
            started = time.perf_counter()
            hyps = []
            for i in range(0, len(sources), args.batch_size):
                hyps += translator.translate(sources[i:i + args.batch_size], beams=args.beams,
                                             batch_size=args.batch_size)
            rate = len(sources) / (time.perf_counter() - started)
        print(f"{path}: {rate:.1f} sent/s, BLEU {sacrebleu.corpus_bleu(hyps, [refs]).score:.2f}", flush=True)


if __name__ == "__main__":
    main()
