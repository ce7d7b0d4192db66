"""Distills a corpus with `wdctl.passes.distill.distill` in small chunks; run directly for one
process or under `torch.distributed.run` for several. Used by test_distributed.py."""

import json
import sys
from pathlib import Path

import torch

from wdctl.core.corpus import read_parallel
from wdctl.passes.distill import distill
from wdctl.passes.distributed import distributed


def main(teacher_dir: str, data: str, cache: str, out: str) -> None:
    torch.set_num_threads(1)
    pairs = read_parallel(data, "train")[:96]
    result = distill(teacher_dir, pairs, cache, beams=1, batch_size=16, chunk_size=16, progress=False)
    if distributed().is_main:
        Path(out).write_text(json.dumps({"pairs": result.pairs, "translated": result.translated,
                                         "cache_files": sorted(p.name for p in Path(cache).iterdir())}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
