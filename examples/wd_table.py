"""Write the WD-vs-baselines table from the runs of examples/wd_recipe.sh.

Reads ROOT/<preset>-<system>.run/metrics.json (written by `wdctl compress`) and ROOT/bench/report.json
(written by `wdctl bench`), scores the teacher on the same test split once (cached in
ROOT/teacher-eval.json), and writes OUT.md and OUT.json. Every figure in the table comes from those
files; the claims at the end are the goals of the issue, checked against them.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from wdctl.core.corpus import read_parallel
from wdctl.core.runinfo import cpu_info, versions, write_json
from wdctl.passes.marian import load_marian
from wdctl.passes.translate import torch_bleu

SPEED_KEY = "speedup_vs_teacher_same_backend"


def teacher_scores(teacher_dir: str, data: str, cache: Path) -> dict:
    """Test BLEU (greedy, beam 4) and PyTorch decode time of the teacher, cached."""
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    model, tokenizer = load_marian(teacher_dir)
    test = read_parallel(data, "test")
    scores = {"parameters": model.num_parameters(), "test_sentences": len(test),
              **torch_bleu(model, tokenizer, test, [1, 4], "test", progress=True)}
    write_json(cache, scores)
    return scores


def bench_speed(report: Path) -> tuple[dict[str, float], dict]:
    """System name -> int8 in-graph speed-up over the teacher (sentences/s, beam 4, batch 1)."""
    if not report.is_file():
        return {}, {}
    data = json.loads(report.read_text(encoding="utf-8"))
    speed = {r["system"]: r[SPEED_KEY] for r in data["rows"]
             if r["status"] == "ok" and r["beams"] == 4 and r["batch_size"] == 1}
    return speed, {"command": data["command"], "sentences": data["rows"][0]["sentences"],
                   "load_average": [r["load_avg"] for r in data["rows"]]}


def run_row(root: Path, preset: str, system: str, speed: dict[str, float]) -> dict | None:
    path = root / f"{preset}-{system}.run" / "metrics.json"
    if not path.is_file():
        print(f"missing {path}: run not finished", file=sys.stderr)
        return None
    m = json.loads(path.read_text(encoding="utf-8"))
    phases = m["phases"]
    first = phases.get("phase1") or phases["train"]
    return {
        "system": f"{preset} {system}", "preset": preset, "method": system,
        "parameters": m["student_parameters"],
        "generator_parameters": m.get("generator_parameters") if system.startswith("wd") else None,
        "test_bleu_beam1": m.get("test_bleu_beam1"), "test_bleu_beam4": m.get("test_bleu_beam4"),
        "test_seconds_beam1": m.get("test_seconds_beam1"), "test_seconds_beam4": m.get("test_seconds_beam4"),
        "probe_step0": first.get("probe_loss_before"),
        "speedup_int8_beam4_bs1": speed.get(f"{preset}-{system}"),
        "steps": sum(p["steps"] for p in phases.values()),
        "phases": {name: {k: p.get(k) for k in ("steps", "train_seconds", "wall_seconds", "peak_rss_mb",
                                                "probe_loss_before", "probe_loss_after")}
                   for name, p in phases.items()},
        "distilled_pairs": m["training_pairs"]["distilled"], "training_pairs": m["training_pairs"]["union"],
    }


def cell(value, fmt="{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def phase_cell(row: dict, name: str) -> str:
    phase = row.get("phases", {}).get(name)
    return "-" if phase is None else f"{phase['train_seconds'] / 60:.1f} min / {phase['peak_rss_mb'] / 1024:.1f} GiB"


def claims(rows: list[dict], teacher: dict, presets: list[str]) -> list[str]:
    """The issue's goals, each checked against the table (beam 4)."""
    by = {(r["preset"], r["method"]): r for r in rows}
    out = []
    for preset in presets:
        wd = by.get((preset, "wd-coherent"))
        if not wd or wd["test_bleu_beam4"] is None:
            continue
        for base in ("kd", "cut-kd", "wd-release"):
            other = by.get((preset, base))
            if other and other["test_bleu_beam4"] is not None:
                gain = wd["test_bleu_beam4"] - other["test_bleu_beam4"]
                goal = "" if base == "wd-release" else f"; goal ≥ +0.50: {'met' if gain >= 0.5 else 'not met'}"
                out.append(f"- {preset}: wd-coherent − {base} = {gain:+.2f} BLEU{goal}.")
        cut = by.get((preset, "cut-kd"))
        if cut and cut["probe_step0"] is not None and wd["probe_step0"] is not None:
            out.append(f"- {preset}: step-0 probe loss wd-coherent {wd['probe_step0']:.3f} vs cut-kd "
                       f"{cut['probe_step0']:.3f} ({'≤' if wd['probe_step0'] <= cut['probe_step0'] + 1e-4 else '>'}).")
        gap = wd["test_bleu_beam4"] - teacher["test_bleu_beam4"]
        allowed = {"small": -0.5, "tiny": -1.5}.get(preset)
        if allowed is not None:
            out.append(f"- {preset} wd-coherent − teacher = {gap:+.2f} BLEU; goal ≥ {allowed:+.1f}: "
                       f"{'met' if gap >= allowed else 'not met'}.")
        if preset == "tiny" and wd["speedup_int8_beam4_bs1"] is not None:
            s = wd["speedup_int8_beam4_bs1"]
            out.append(f"- tiny wd-coherent speed = {s:.2f}x the teacher (onnxruntime int8, beam 4, batch 1); "
                       f"goal ≥ 2.50x: {'met' if s >= 2.5 else 'not met'}.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="OUT.md and OUT.json are written")
    ap.add_argument("--presets", default="tiny small")
    ap.add_argument("--systems", default="kd cut-kd wd-release wd-coherent")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each training run and of the teacher's scoring")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    presets, systems = args.presets.split(), args.systems.split()

    teacher = teacher_scores(args.teacher, args.data, args.root / "teacher-eval.json")
    speed, bench = bench_speed(args.root / "bench" / "report.json")
    rows = [{"system": "teacher", "preset": "-", "method": "-", "parameters": teacher["parameters"],
             "test_bleu_beam1": teacher["test_bleu_beam1"], "test_bleu_beam4": teacher["test_bleu_beam4"],
             "speedup_int8_beam4_bs1": speed.get(Path(args.teacher).name)}]
    rows += [r for p in presets for s in systems if (r := run_row(args.root, p, s, speed))]
    students = rows[1:]
    wd = next((r for r in students if r["method"].startswith("wd")), None)
    budget = " + ".join(f"{p['steps']}" for p in wd["phases"].values()) if wd else "-"

    lines = [
        f"# Weight distillation vs baselines (teacher `{args.teacher}`, data `{args.data}`)",
        "",
        f"Equal budgets: every student trains {budget} optimizer steps (wd: phase 1 + phase 2; kd and cut-kd: "
        f"the same total in one phase with the phase-1 schedule), {args.threads} torch thread(s) each, on the same "
        "original ∪ teacher-distilled (beam 4) pairs. Test BLEU on all "
        f"{teacher['test_sentences']} test sentences, sacrebleu `{teacher['bleu_signature']}`. Probe = label-smoothed "
        "dev cross-entropy of the student at step 0. Speed = sentences/s against the teacher in onnxruntime int8, "
        f"the in-graph translator, 1 thread, beam 4, batch 1, first {bench.get('sentences', '-')} test sentences.",
        "",
        "| system | params (x teacher) | BLEU greedy | BLEU beam 4 | Δ beam 4 | step-0 probe | "
        "phase 1 time / peak RSS | phase 2 time / peak RSS | speed (int8, beam 4, bs 1) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        student = r["method"] != "-"
        delta = r["test_bleu_beam4"] - teacher["test_bleu_beam4"] if student and r["test_bleu_beam4"] is not None else None
        first = phase_cell(r, "phase1") if "phase1" in r.get("phases", {}) else phase_cell(r, "train")
        lines.append(
            f"| {r['system']} | {r['parameters']:,} ({r['parameters'] / teacher['parameters']:.2f}) | "
            f"{cell(r['test_bleu_beam1'])} | {cell(r['test_bleu_beam4'])} | {cell(delta, '{:+.2f}')} | "
            f"{cell(r.get('probe_step0'), '{:.3f}')} | {first if student else '-'} | {phase_cell(r, 'phase2')} | "
            f"{cell(r['speedup_int8_beam4_bs1'], '{:.2f}x')} |")
    found = claims(students, teacher, presets)
    lines += ["", "## Goals", "", *found, "",
              f"Per-phase numbers (steps, seconds, peak RSS, probe loss before/after) are in {args.out.name}.json; "
              f"the speed figures come from `{bench.get('command', '-')}`.", ""]

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines), encoding="utf-8")
    write_json(args.out.with_suffix(".json"), {
        "teacher_dir": args.teacher, "data": args.data, "threads": args.threads, "teacher": teacher,
        "rows": rows, "claims": found, "bench": bench, "machine": cpu_info(), "versions": versions()})
    print("\n".join(lines))
    print(f"written: {args.out.with_suffix('.md')}, {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
