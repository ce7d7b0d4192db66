#!/usr/bin/env bash
# Students trained to a plateau: WD against prune-and-distil and KD, with learning curves.
#
#   examples/plateau_recipe.sh [RUN ...]        (default: every run in RUNS, below)
#
# A run is PRESET-SYSTEM-sSEED, e.g. small-wd-s1. Systems, all on the bundled teacher's full
# distilled set (27,928 original ∪ 27,928 teacher beam-4 pairs), dev BLEU (greedy, 500 dev pairs)
# every 250 steps (examples/plateau.yaml), stopped at a plateau (no gain above 0.2 BLEU over 4
# evaluations) or at the cap, PHASE1_STEPS + PHASE2_STEPS optimizer steps (TINY: PHASE2_STEPS_TINY,
# since its first run was still rising at 300 + 3,000):
#
#   wd        wdctl compress --method wd --start importance         (phase 1: the generator, P1 steps;
#                                                                    phase 2: the student, up to P2 steps)
#   prune-kd  wdctl compress --method cut-kd --start importance     (the same importance slice, pruned
#                                                                    and distilled: one schedule, P1+P2 steps)
#   prune-kd-2ph  --method cut-kd-two-phase --start importance      (that slice on wd's two schedules:
#                                                                    the warm-up restarts at P1)
#   kd        wdctl compress --method kd                            (random init, P1+P2 steps to the cap, on
#                                                                    the teacher's from-scratch schedule:
#                                                                    examples/plateau-kd.yaml; TINY at peak
#                                                                    lr KD_LR_TINY, see that file)
#   SYSTEM-kl  any of the above with a word-level KL term to the teacher (--kd-weight KL_WEIGHT) beside
#              the sequence-level data: Minitron's logit distillation (e.g. tiny-wd-kl-s1)
#
# For the presets in REFIT (default: tiny), wd and prune-kd start from the importance slice with
# its top decoder layer refitted to the teacher's output (--refit-output, now compress's default):
# TINY's one-layer decoder cut from any teacher layer probes at the uniform loss without it
# (examples/results/start-probe/). SMALL's runs were started before the refit existed and keep
# --no-refit-output, so that they compare like for like.
#
# Every run checkpoints under ROOT and resumes: rerun the script (or the one run) after an
# interruption. Finished runs are skipped; one that finished at a smaller cap trains on to the new
# one (compress continues its last phase from its last checkpoint). Then examples/plateau_table.py --onnx writes
# RESULTS/{plateau.md,plateau.json,curves.png} from whatever runs have finished or are under way,
# with each finished run exported to onnxruntime int8 and timed at batch 1.
#
# Settings (environment variables):
#   ROOT=runs/plateau  RESULTS=examples/results/plateau  DATA=examples/data/bible  THREADS=2
#   PHASE1_STEPS=300  PHASE2_STEPS=3000  PHASE2_STEPS_TINY=6000  PHASE1_WARMUP=50  EVAL_SENTENCES=500
#   KD_LR_TINY=7e-4  REFIT="tiny"  KL_WEIGHT=0.5  PRECISION=fp32 (the first runs trained on an AVX2 CPU, where compress's "auto" is fp32;
#                                  on a CPU with AVX-512 BF16 "auto" would be bf16 and the seeds would differ)
#   RUNS="small-wd-s1 small-prune-kd-s1 ... tiny-kd-s1" (the list below)
# On 2 CPU cores: distilling the 27,928 sources takes 20-60 min once (cached in ROOT/distill-cache).
# The bundled teacher's distilled set is committed (examples/data/distilled, 2.3 MB gzipped) and seeds
# that cache, so a fresh machine skips it. A SMALL step takes ~1.0-1.5 s in fp32, a dev evaluation ~20 s.
set -euo pipefail

cd "$(dirname "$0")/.."
TEACHER=${TEACHER:-examples/teacher}
DATA=${DATA:-examples/data/bible}
ROOT=${ROOT:-runs/plateau}
RESULTS=${RESULTS:-examples/results/plateau}
THREADS=${THREADS:-2}
PHASE1_STEPS=${PHASE1_STEPS:-300}
PHASE2_STEPS=${PHASE2_STEPS:-3000}
PHASE2_STEPS_TINY=${PHASE2_STEPS_TINY:-6000}
PHASE1_WARMUP=${PHASE1_WARMUP:-50}
KD_LR_TINY=${KD_LR_TINY:-7e-4}
EVAL_SENTENCES=${EVAL_SENTENCES:-500}
REFIT=${REFIT-tiny}
KL_WEIGHT=${KL_WEIGHT:-0.5}
PRECISION=${PRECISION:-fp32}
RUNS=${RUNS:-small-wd-s1 small-prune-kd-s1 small-kd-s1 small-wd-s2 small-prune-kd-s2 small-prune-kd-2ph-s1 tiny-wd-s1 tiny-prune-kd-s1 tiny-kd-s1}
WDCTL=${WDCTL:-$( [ -x .venv/bin/wdctl ] && echo .venv/bin/wdctl || echo wdctl )}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# A system name and preset -> its `wdctl compress` flags.
system_flags() {
  local base
  case "$1" in *-kl) base=$(system_flags "${1%-kl}" "$2") || exit 2; echo "$base --kd-weight $KL_WEIGHT"; return ;; esac
  local refit=" --no-refit-output"
  case " $REFIT " in *" $2 "*) refit=" --refit-output" ;; esac
  case "$1" in
    wd) echo "--method wd --start importance$refit" ;;
    prune-kd) echo "--method cut-kd --start importance$refit" ;;
    prune-kd-2ph) echo "--method cut-kd-two-phase --start importance$refit" ;;
    kd) echo "--method kd" ;;
    *) echo "unknown system '$1' (wd, prune-kd, prune-kd-2ph, kd, each with -kl)" >&2; exit 2 ;;
  esac
}

mkdir -p "$ROOT/distill-cache" "$RESULTS"
for committed in examples/data/distilled/distilled-*.tsv.gz; do  # the committed distilled set, if it is this one
  cached="$ROOT/distill-cache/$(basename "${committed%.gz}")"
  [ -e "$committed" ] && [ ! -e "$cached" ] && gunzip -c "$committed" > "$cached.tmp" && mv "$cached.tmp" "$cached" \
    && cp "${committed%.tsv.gz}.json" "${cached%.tsv}.json"
done
for run in ${*:-$RUNS}; do
  preset=${run%%-*}; rest=${run#*-}; system=${rest%-s*}; seed=${rest##*-s}
  phase2_steps=$PHASE2_STEPS; [ "$preset" = tiny ] && phase2_steps=$PHASE2_STEPS_TINY
  # done: its last invocation finished (metrics.json after config.json) at the wanted cap
  if [ "$ROOT/$run.run/metrics.json" -nt "$ROOT/$run.run/config.json" ] && [ -d "$ROOT/$run" ] && [ "$("$PYTHON" -c \
      'import json, sys; print(json.load(open(sys.argv[1]))["phase2"]["max_steps"])' "$ROOT/$run.run/config.json")" = "$phase2_steps" ]; then
    echo "== $run: done"; continue
  fi
  # kd trains from scratch on its own schedule (examples/plateau-kd.yaml, warm-up included)
  config=examples/plateau.yaml schedule="--phase1-warmup $PHASE1_WARMUP"
  [ "${system%-kl}" = kd ] && config=examples/plateau-kd.yaml schedule=
  [ "${system%-kl}" = kd ] && [ "$preset" = tiny ] && schedule="--phase1-lr $KD_LR_TINY"
  flags=$(system_flags "$system" "$preset")  # an unknown system stops the recipe here
  echo "== $run"
  # shellcheck disable=SC2086
  "$WDCTL" compress "$TEACHER" --data "$DATA" --out "$ROOT/$run" --student "$preset" $flags \
    --phase1-steps "$PHASE1_STEPS" --phase2-steps "$phase2_steps" $schedule \
    --seed "$seed" --onnx-distill --distill-cache "$ROOT/distill-cache" --eval-sentences "$EVAL_SENTENCES" \
    --no-export --config "$config" --threads "$THREADS" --precision "$PRECISION"
done

"$PYTHON" examples/plateau_table.py --teacher "$TEACHER" --data "$DATA" --root "$ROOT" --out "$RESULTS" \
  --eval-sentences "$EVAL_SENTENCES" --threads "$THREADS" --onnx
