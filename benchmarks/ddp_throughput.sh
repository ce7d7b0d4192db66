#!/usr/bin/env bash
# Teacher-training throughput: one process with N threads vs `--nproc N` (N DDP processes of one
# thread each), the same global batch (--accum N) and the same batches, on the bundled corpus.
# No dev/test split is given, so no evaluation runs inside the timing.
#   benchmarks/ddp_throughput.sh [STEPS=60] [N=2]      (WDCTL=path/to/wdctl, OUT=runs/ddp-throughput)
set -euo pipefail
steps=${1:-60}; n=${2:-2}
wdctl=${WDCTL:-wdctl}; out=${OUT:-runs/ddp-throughput}
rm -rf "$out"; mkdir -p "$out"
zcat examples/data/bible/train.en-es.tsv.gz > "$out/train.tsv"
common=(teacher train --data "$out/train.tsv" --preset cpu --max-steps "$steps" --max-minutes 0 --accum "$n")
"$wdctl" "${common[@]}" --out "$out/threads/model" --threads "$n"
mkdir -p "$out/ddp/model.run" && cp -r "$out/threads/model.run/vocab" "$out/ddp/model.run/"  # same vocabulary
"$wdctl" "${common[@]}" --out "$out/ddp/model" --nproc "$n"
python3 - "$out" "$n" <<'PY'
import json, sys
from pathlib import Path
out, n = Path(sys.argv[1]), sys.argv[2]
print(f"| run | steps | training s | steps/s | last logged loss |\n|---|---:|---:|---:|---:|")
for name, label in (("threads", f"1 process, {n} threads"), ("ddp", f"--nproc {n}, 1 thread each")):
    last = [r for r in map(json.loads, (out / name / "model.run" / "log.jsonl").read_text().splitlines()) if "loss" in r][-1]
    print(f"| {label} | {last['step']} | {last['seconds']:.1f} | {last['step'] / last['seconds']:.3f} | {last['loss']:.3f} |")
PY
