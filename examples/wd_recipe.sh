#!/usr/bin/env bash
# The results table of Weight Distillation against its baselines, from one teacher directory.
#
#   examples/wd_recipe.sh [TEACHER_DIR]          (default: the bundled teacher, examples/teacher)
#
# For each student preset (tiny, small) and each system (kd, cut-kd, wd-release, wd-coherent):
#
#   wdctl compress TEACHER --data DATA --student PRESET --method kd|cut-kd|wd [--generator release|coherent] \
#         --phase1-steps P1 --phase2-steps P2 --onnx-distill --no-export --distill-cache ROOT/distill-cache
#
# so every student of a preset has the same shape, the same original ∪ distilled data and the
# same number of optimizer steps (wd: P1 generator steps + P2 fine-tuning steps; kd and cut-kd:
# P1+P2 steps with the phase-1 schedule). cut-kd and both wd forms start from the same selection
# (--start, leading by default), so the wd rows show what the generator adds. The teacher
# translates the training data once, with its in-graph ONNX translator (the cache is shared by
# all runs), and is scored on the same test split. Then `wdctl bench` measures every model in onnxruntime int8 (the in-graph
# translator, 1 thread, batch 1, beam 4) and examples/wd_table.py writes RESULTS/TABLE.md and
# RESULTS/TABLE.json: test BLEU (greedy and beam 4, sacrebleu), step-0 probe loss, parameters,
# training time and peak RSS per phase, and the speed against the teacher.
#
# Everything resumes: rerun the script after Ctrl-C, finished runs are skipped.
#
# Settings (environment variables):
#   DATA=examples/data/bible  ROOT=runs/wd-table  RESULTS=examples/results  TABLE=wd_table (file name)
#   PHASE1_STEPS=300  PHASE2_STEPS=300  PHASE1_WARMUP=50  PHASE2_WARMUP=50  THREADS=2
#   PRESETS="tiny small"  SYSTEMS="kd cut-kd wd-release wd-coherent"  BENCH_SENTENCES=200
#   EXTRA="--eval-sentences 0 --precision fp32"   (more `wdctl compress` flags, e.g. --start importance;
#   the committed table was trained in fp32, before `--precision auto` became the default)
# On 2 CPU cores: ~12 min to distil the 27,928 training sources (beam 4), then about
# (P1+P2) x 0.6-1.5 s per run plus ~1.5 min of test decoding, eight runs, and ~5 min of bench.
set -euo pipefail

cd "$(dirname "$0")/.."
TEACHER=${1:-${TEACHER:-examples/teacher}}
DATA=${DATA:-examples/data/bible}
ROOT=${ROOT:-runs/wd-table}
RESULTS=${RESULTS:-examples/results}
TABLE=${TABLE:-wd_table}
PHASE1_STEPS=${PHASE1_STEPS:-300}
PHASE2_STEPS=${PHASE2_STEPS:-300}
PHASE1_WARMUP=${PHASE1_WARMUP:-50}
PHASE2_WARMUP=${PHASE2_WARMUP:-50}
THREADS=${THREADS:-2}
PRESETS=${PRESETS:-tiny small}
SYSTEMS=${SYSTEMS:-kd cut-kd wd-release wd-coherent}
BENCH_SENTENCES=${BENCH_SENTENCES:-200}
EXTRA=${EXTRA:---eval-sentences 0 --precision fp32}
WDCTL=${WDCTL:-$( [ -x .venv/bin/wdctl ] && echo .venv/bin/wdctl || echo wdctl )}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# A system name is the method, with the generator form for wd.
method_flags() {
  case "$1" in
    kd|cut-kd) echo "--method $1" ;;
    wd-release|wd-coherent) echo "--method wd --generator ${1#wd-}" ;;
    *) echo "unknown system '$1' (kd, cut-kd, wd-release, wd-coherent)" >&2; exit 2 ;;
  esac
}

mkdir -p "$ROOT" "$RESULTS"
students=()
for preset in $PRESETS; do
  for system in $SYSTEMS; do
    out="$ROOT/$preset-$system"
    students+=(--student "$out")
    if [ -d "$out" ] && "$PYTHON" -c 'import json, sys; m = json.load(open(sys.argv[1]))
sys.exit(sum(p["steps"] for p in m["phases"].values()) != int(sys.argv[2]) or "test_bleu_beam4" not in m)' \
        "$out.run/metrics.json" "$((PHASE1_STEPS + PHASE2_STEPS))" 2>/dev/null; then
      echo "== $preset $system: done ($out)"; continue
    fi
    echo "== $preset $system"
    # shellcheck disable=SC2046,SC2086
    "$WDCTL" compress "$TEACHER" --data "$DATA" --out "$out" --student "$preset" $(method_flags "$system") \
      --phase1-steps "$PHASE1_STEPS" --phase2-steps "$PHASE2_STEPS" \
      --phase1-warmup "$PHASE1_WARMUP" --phase2-warmup "$PHASE2_WARMUP" --threads "$THREADS" \
      --distill-cache "$ROOT/distill-cache" --onnx-distill --no-export --force $EXTRA
  done
done

if [ ! -f "$ROOT/bench/report.json" ]; then
  "$WDCTL" bench --teacher "$TEACHER" "${students[@]}" --data "$DATA" --beams 4 --batch-sizes 1 --threads 1 \
    --backends ort-graph-int8 --max-sentences "$BENCH_SENTENCES" --repeats 1 --out "$ROOT/bench" --force
fi

"$PYTHON" examples/wd_table.py --teacher "$TEACHER" --data "$DATA" --root "$ROOT" --out "$RESULTS/$TABLE" \
  --presets "$PRESETS" --systems "$SYSTEMS" --threads "$THREADS"
