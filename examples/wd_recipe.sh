#!/usr/bin/env bash
# The results table of Weight Distillation against its baselines, from one teacher directory.
#
#   examples/wd_recipe.sh [TEACHER_DIR]          (default: runs/cpu-teacher/model)
#
# For each student preset (tiny, small) and each method (kd, cut-kd, wd) this runs
#
#   wdctl compress TEACHER --data DATA --student PRESET --method METHOD \
#         --phase1-steps P1 --phase2-steps P2 --no-export --distill-cache ROOT/distill-cache
#
# so every student of a preset has the same shape, the same original ∪ distilled data and the
# same number of optimizer steps (wd: P1 generator steps + P2 fine-tuning steps; kd and cut-kd:
# P1+P2 steps with the phase-1 schedule). The teacher translates the training data once (the
# cache is shared by all six runs). Then the teacher itself is scored on the same test split,
# and the table is written to RESULTS/wd_table.md and RESULTS/wd_table.json: test BLEU (greedy
# and beam 4, sacrebleu), parameters, training time per phase, peak memory per phase, and the
# PyTorch time to translate the test set.
#
# Everything resumes: rerun the script after Ctrl-C, finished runs and phases are skipped.
#
# Settings (environment variables):
#   DATA=examples/data/bible  ROOT=runs/wd-table  RESULTS=examples/results  TABLE=wd_table (file name)
#   PHASE1_STEPS=1000  PHASE2_STEPS=1000  THREADS=2  PRESETS="tiny small"  METHODS="kd cut-kd wd"
#   EXTRA="--eval-sentences 200"   (more `wdctl compress` flags, e.g. --config FILE.yaml)
# On 2 CPU cores, budget about (P1+P2) x 0.5-1.5 s per run, six runs, plus ~30 min once for
# distilling the bundled corpus with beam 4.
set -euo pipefail

cd "$(dirname "$0")/.."
TEACHER=${1:-${TEACHER:-runs/cpu-teacher/model}}
DATA=${DATA:-examples/data/bible}
ROOT=${ROOT:-runs/wd-table}
RESULTS=${RESULTS:-examples/results}
TABLE=${TABLE:-wd_table}
PHASE1_STEPS=${PHASE1_STEPS:-1000}
PHASE2_STEPS=${PHASE2_STEPS:-1000}
THREADS=${THREADS:-2}
PRESETS=${PRESETS:-tiny small}
METHODS=${METHODS:-kd cut-kd wd}
EXTRA=${EXTRA:---eval-sentences 200}
WDCTL=${WDCTL:-$( [ -x .venv/bin/wdctl ] && echo .venv/bin/wdctl || echo wdctl )}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export OMP_NUM_THREADS=$THREADS HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$ROOT" "$RESULTS"
for preset in $PRESETS; do
  for method in $METHODS; do
    out="$ROOT/$preset-$method"
    if [ -d "$out" ] && "$PYTHON" -c 'import json, sys; m = json.load(open(sys.argv[1]))
sys.exit(sum(p["steps"] for p in m["phases"].values()) != int(sys.argv[2]))' \
        "$out.run/metrics.json" "$((PHASE1_STEPS + PHASE2_STEPS))" 2>/dev/null; then
      echo "== $preset $method: done ($out)"; continue
    fi
    echo "== $preset $method"
    # shellcheck disable=SC2086
    "$WDCTL" compress "$TEACHER" --data "$DATA" --out "$out" --student "$preset" --method "$method" \
      --phase1-steps "$PHASE1_STEPS" --phase2-steps "$PHASE2_STEPS" --threads "$THREADS" \
      --distill-cache "$ROOT/distill-cache" --no-export --force $EXTRA
  done
done

"$PYTHON" - "$TEACHER" "$DATA" "$ROOT" "$RESULTS" "$PHASE1_STEPS" "$PHASE2_STEPS" "$THREADS" "$PRESETS" "$METHODS" "$TABLE" <<'EOF'
"""Score the teacher on the test split (once, cached) and write the table."""
import json
import sys
import time
from pathlib import Path

import torch

from wdctl.core.corpus import read_parallel
from wdctl.core.metrics import bleu
from wdctl.passes.marian import load_marian
from wdctl.passes.translate import translate_torch
from wdctl.core.runinfo import cpu_info, versions, write_json

teacher_dir, data, root, results, p1, p2, threads, presets, methods, table = sys.argv[1:]
root, results, threads = Path(root), Path(results), int(threads)
torch.set_num_threads(threads)

teacher_eval = root / "teacher-eval.json"
if not teacher_eval.is_file():
    model, tokenizer = load_marian(teacher_dir)
    test = read_parallel(data, "test")
    scores = {"parameters": model.num_parameters(), "test_sentences": len(test)}
    for beams in (1, 4):
        started = time.perf_counter()
        hyps = translate_torch(model, tokenizer, [s for s, _ in test], beams=beams, batch_size=64, progress=True)
        scores[f"test_seconds_beam{beams}"] = round(time.perf_counter() - started, 2)
        score = bleu(hyps, [t for _, t in test])
        scores[f"test_bleu_beam{beams}"], scores["bleu_signature"] = score.score, score.signature
    write_json(teacher_eval, scores)
teacher = json.loads(teacher_eval.read_text())

rows = [{"system": "teacher", "preset": "-", "method": "-", "parameters": teacher["parameters"],
         "test_bleu_beam1": teacher["test_bleu_beam1"], "test_bleu_beam4": teacher["test_bleu_beam4"],
         "test_seconds_beam1": teacher["test_seconds_beam1"], "test_seconds_beam4": teacher["test_seconds_beam4"]}]
for preset in presets.split():
    for method in methods.split():
        path = root / f"{preset}-{method}.run" / "metrics.json"
        if not path.is_file():
            print(f"missing {path}: run not finished", file=sys.stderr)
            continue
        m = json.loads(path.read_text())
        phases = m["phases"]
        rows.append({
            "system": f"{preset} {method}", "preset": preset, "method": method,
            "parameters": m["student_parameters"], "generator_parameters": m["generator_parameters"] if method == "wd" else None,
            "test_bleu_beam1": m.get("test_bleu_beam1"), "test_bleu_beam4": m.get("test_bleu_beam4"),
            "test_seconds_beam1": m.get("test_seconds_beam1"), "test_seconds_beam4": m.get("test_seconds_beam4"),
            "steps": sum(p["steps"] for p in phases.values()),
            "phases": {name: {k: p.get(k) for k in ("steps", "train_seconds", "wall_seconds", "peak_rss_mb",
                                                    "probe_loss_before", "probe_loss_after")}
                       for name, p in phases.items()},
            "distilled_pairs": m["training_pairs"]["distilled"], "training_pairs": m["training_pairs"]["union"],
        })

def cell(value, fmt="{:.2f}"):
    return "-" if value is None else fmt.format(value)

def minutes(row, name):
    phase = row.get("phases", {}).get(name)
    return "-" if phase is None else f"{phase['train_seconds'] / 60:.1f} min / {phase['peak_rss_mb'] / 1024:.1f} GiB"

lines = [
    f"# Weight distillation vs baselines ({Path(teacher_dir).name}, {data})",
    "",
    f"Equal budgets: wd = {p1} phase-1 + {p2} phase-2 steps; kd and cut-kd = {int(p1) + int(p2)} steps. "
    f"All students train on original ∪ teacher-distilled (beam 4) pairs. Test BLEU on "
    f"{teacher['test_sentences']} sentences, sacrebleu `{teacher['bleu_signature']}`. "
    f"Decode = PyTorch seconds for the whole test set, {threads} thread(s), batch 64.",
    "",
    "| system | params (x teacher) | BLEU greedy | BLEU beam4 | Δ beam4 vs teacher | phase 1 time / peak RSS | "
    "phase 2 (or single phase) time / peak RSS | decode greedy / beam4 (s) |",
    "|---|---|---|---|---|---|---|---|",
]
for r in rows:
    delta = None if r["test_bleu_beam4"] is None else r["test_bleu_beam4"] - teacher["test_bleu_beam4"]
    ratio = r["parameters"] / teacher["parameters"]
    second = minutes(r, "phase2") if r["method"] == "wd" else minutes(r, "train")
    lines.append(
        f"| {r['system']} | {r['parameters']:,} ({ratio:.2f}) | {cell(r['test_bleu_beam1'])} | {cell(r['test_bleu_beam4'])} | "
        f"{cell(delta, '{:+.2f}') if r['method'] != '-' else '-'} | {minutes(r, 'phase1')} | {second if r['method'] != '-' else '-'} | "
        f"{cell(r['test_seconds_beam1'], '{:.1f}')} / {cell(r['test_seconds_beam4'], '{:.1f}')} |"
    )

claims = []
by = {(r["preset"], r["method"]): r for r in rows}
for preset in presets.split():
    wd, kd = by.get((preset, "wd")), by.get((preset, "kd"))
    if wd and kd and wd["test_bleu_beam4"] is not None and kd["test_bleu_beam4"] is not None:
        gain = wd["test_bleu_beam4"] - kd["test_bleu_beam4"]
        claims.append(f"- {preset}: wd − kd = {gain:+.2f} BLEU (beam 4); paper's claim wd ≥ kd + 0.5: "
                      f"{'reproduced' if gain >= 0.5 else 'not reproduced'}.")
    cut = by.get((preset, "cut-kd"))
    if wd and cut and wd["test_bleu_beam4"] is not None and cut["test_bleu_beam4"] is not None:
        claims.append(f"- {preset}: wd − cut-kd = {wd['test_bleu_beam4'] - cut['test_bleu_beam4']:+.2f} BLEU (beam 4).")
small = by.get(("small", "wd"))
if small and small["test_bleu_beam4"] is not None:
    gap = small["test_bleu_beam4"] - teacher["test_bleu_beam4"]
    claims.append(f"- small wd − teacher = {gap:+.2f} BLEU (beam 4); claim 'within 0.5 BLEU of the teacher': "
                  f"{'reproduced' if gap >= -0.5 else 'not reproduced'}.")
lines += ["", "## Claims", "", *claims, "",
          f"Per-phase numbers (steps, training seconds, peak RSS, probe loss before/after) are in {table}.json.", ""]

results.mkdir(parents=True, exist_ok=True)
(results / f"{table}.md").write_text("\n".join(lines), encoding="utf-8")
write_json(results / f"{table}.json", {
    "teacher_dir": teacher_dir, "data": data, "phase1_steps": int(p1), "phase2_steps": int(p2), "threads": threads,
    "teacher": teacher, "rows": rows, "claims": claims, "machine": cpu_info(), "versions": versions(),
})
print("\n".join(lines))
print(f"written: {results / f'{table}.md'}, {results / f'{table}.json'}")
EOF
