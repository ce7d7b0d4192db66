"""Turn a finished `wdctl teacher train` run into the bundled teacher (`examples/teacher/`).

    python examples/ship_teacher.py runs/teacher6/model examples/teacher [--run-dir runs/teacher6/model.run]

Writes a standard MarianMT directory with fp16 weights (half the size; wdctl loads them as
fp32 wherever it trains or exports), the tokenizer, and `training/` beside it: the run's config,
training log and metrics (its test BLEU was scored with the fp32 weights), the commands that
made it, and `shipped.json`: how many of the first 200 test sentences the fp16 weights translate
exactly as the fp32 ones (greedy), the greedy BLEU of the first 20 test pairs, which
`tests/test_bundled_teacher.py` checks the shipped model against, and with `--score` the test
BLEU of the fp16 weights on all test pairs (greedy and beam 4).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from wdctl.core.atomic import atomic_dir
from wdctl.core.corpus import read_parallel
from wdctl.core.metrics import bleu
from wdctl.core.runinfo import versions, write_json
from wdctl.passes.marian import load_marian, save_marian
from wdctl.passes.translate import torch_bleu, translate_torch

CHECK_SENTENCES = 20  # the quick test's sample: the first test pairs, greedy
AGREEMENT_SENTENCES = 200  # fp16 vs fp32 outputs compared on these
COMMANDS = """\
# 1. train (resumes from runs/teacher6/model.run when rerun; --max-minutes counts training time only)
wdctl teacher train --data examples/data/bible --out runs/teacher6/model --preset cpu6 --threads 2 --max-minutes {minutes:g}
# 2. ship: fp16 weights + tokenizer + these files
python examples/ship_teacher.py runs/teacher6/model examples/teacher
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the MarianMT directory `wdctl teacher train` wrote")
    parser.add_argument("out", type=Path, help="where to write the bundled teacher")
    parser.add_argument("--run-dir", type=Path, help="the run directory (default: MODEL.run)")
    parser.add_argument("--data", default="examples/data/bible", help="corpus whose test split is scored")
    parser.add_argument("--force", action="store_true", help="replace an existing bundled teacher")
    parser.add_argument("--score", action="store_true", help="also score the fp16 weights on the whole test split")
    args = parser.parse_args()
    run_dir = args.run_dir or args.model.with_name(args.model.name + ".run")
    torch.set_num_threads(2)

    model, tokenizer = load_marian(args.model)
    test = read_parallel(args.data, "test")
    sources = [s for s, _ in test[:AGREEMENT_SENTENCES]]
    fp32 = translate_torch(model, tokenizer, sources, beams=1, batch_size=64, progress=True)
    with atomic_dir(args.out, force=args.force) as tmp:
        save_marian(model.half(), tokenizer, tmp)
        shipped, _ = load_marian(tmp)  # what users get: the fp16 weights, loaded as fp32
        fp16 = translate_torch(shipped, tokenizer, sources, beams=1, batch_size=64, progress=True)
        same = sum(a == b for a, b in zip(fp32, fp16))
        scores = torch_bleu(shipped, tokenizer, test, [1, 4], "test", progress=True) if args.score else {}
        sample = test[:CHECK_SENTENCES]  # decoded as the test does: one padded batch, plain generate
        batch = tokenizer([s for s, _ in sample], return_tensors="pt", padding=True)
        with torch.inference_mode():
            ids = shipped.generate(**batch, num_beams=1, max_length=256)
        check = bleu(tokenizer.batch_decode(ids, skip_special_tokens=True), [t for _, t in sample])
        training = tmp / "training"
        training.mkdir()
        for name in ("config.json", "log.jsonl", "metrics.json"):
            shutil.copyfile(run_dir / name, training / name)
        minutes = float(json.loads((run_dir / "config.json").read_text())["train"]["max_minutes"])
        (training / "commands.sh").write_text(COMMANDS.format(minutes=minutes), encoding="utf-8")
        write_json(training / "shipped.json", {
            "weights": "fp16", "test_pairs": len(test), **scores,
            "same_as_fp32_greedy": f"{same}/{len(sources)}",
            "check": {"sentences": CHECK_SENTENCES, "beams": 1, "bleu": check.score},
            "versions": versions(),
        })
    print(f"bundled teacher written to {args.out}: fp16 = fp32 greedy output on {same}/{len(sources)} "
          f"test sentences; {scores or 'test BLEU: see training/metrics.json'}")


if __name__ == "__main__":
    main()
