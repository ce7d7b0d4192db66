#!/usr/bin/env bash
# How long phase 1, and how phase 2 restarts: SMALL wd (seed 1) on the plateau recipe's data and
# settings (examples/plateau_recipe.sh: importance start without the refit, as small-wd-s1), dev
# BLEU every 250 steps, against small-wd-s1 (phase 1 300 steps, phase-2 warm-up 100).
#
#   examples/phase_probe.sh [PROBE ...]      (default: every probe below; resumable, finished ones skipped)
#
#   p1-1000     phase 1 for 1,000 steps (the generator's own curve), then 250 phase-2 steps
#   p2-warm400  phase 1 300 steps, then phase 2 with a 400-step warm-up instead of 100, 750 steps
#
# Both end near 1,050-1,250 steps, where small-wd-s1 reached the teacher − 2; each can be trained
# on later with a larger PHASE2 (compress continues a finished run's last phase).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=${ROOT:-runs/phase-probe}
THREADS=${THREADS:-2}
WDCTL=${WDCTL:-$( [ -x .venv/bin/wdctl ] && echo .venv/bin/wdctl || echo wdctl )}
export OMP_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

probe_flags() {
  case "$1" in
    p1-1000) echo "--phase1-steps 1000 --phase2-steps 250" ;;
    p2-warm400) echo "--phase1-steps 300 --phase2-steps 750 --phase2-warmup 400" ;;
    *) echo "unknown probe '$1' (p1-1000, p2-warm400)" >&2; exit 2 ;;
  esac
}

for probe in ${*:-p1-1000 p2-warm400}; do
  if [ -f "$ROOT/$probe.run/metrics.json" ] && [ -d "$ROOT/$probe" ]; then
    echo "== $probe: done"; continue
  fi
  echo "== $probe"
  # shellcheck disable=SC2046
  "$WDCTL" compress examples/teacher --data examples/data/bible --out "$ROOT/$probe" --student small \
    --method wd --start importance --no-refit-output $(probe_flags "$probe") --phase1-warmup 50 --seed 1 \
    --onnx-distill --distill-cache runs/plateau/distill-cache --eval-sentences 500 --no-export \
    --config examples/plateau.yaml --threads "$THREADS"
done
