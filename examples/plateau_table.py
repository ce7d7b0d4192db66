"""Learning curves and the plateau table from the runs of examples/plateau_recipe.sh.

Reads each ROOT/<run>.run/<phase>/log.jsonl (dev BLEU, greedy, every 250 steps; finished or under
way) and ROOT/<run>.run/metrics.json (test BLEU of a finished run), scores the teacher once on the
same dev and test pairs (cached in ROOT/teacher-eval.json), and writes OUT/plateau.md,
OUT/plateau.json (the table and every curve) and OUT/curves.png (dev BLEU against steps, one line
per run, one panel per preset). Steps are counted over both phases (wd: phase-1 steps first).

With --onnx, each finished run and the teacher are also exported as the package `wdctl export
--quantize int8 --data DATA` makes (in ROOT/<run>.pkg, ROOT/teacher.pkg; calibrated on dev,
shortlisted; and with --no-shortlist in <pkg>-full) and scored in onnxruntime, 1 thread, batch 1: test BLEU and tokens/s, greedy and
beam 4, with the shortlist and without (`--no-shortlist`), and the package's size. Each package's
figures are cached in it (plateau-onnx.json, with the share of the cores other processes used
while it was timed): take them with nothing else running (pause the training with SIGSTOP). A
rebuild without --onnx shows the cached figures of every package still as new as its model.

A run whose final student is the mean of its last checkpoints (phase 2's `average_last`, in
examples/plateau.yaml from session 20 on) is scored twice: its last checkpoint alone (the figure
that compares with the runs that kept only the last; cached in ROOT/<run>.run/last-checkpoint-test.json)
and the averaged student compress wrote (its metrics.json; the one --onnx exports).

A run whose directory is gone (a fresh machine keeps only what was committed) keeps the row the
previous OUT/plateau.json recorded for it: a finished one marked "recorded", with the teacher
timings its speed was measured against, one cut off while training marked "stopped" (its curve so
far); a run directory of the same name replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from wdctl.core.corpus import read_parallel
from wdctl.core.metrics import bleu
from wdctl.core.runinfo import cpu_info, versions, write_json
from wdctl.passes.marian import load_marian
from wdctl.passes.training import checkpoint_dirs, checkpoint_step, load_trainable, plateaued
from wdctl.passes.translate import dev_bleu_evaluator, torch_bleu

PHASE_ORDER = ("phase1", "phase2", "train")  # wd runs phase1 then phase2; kd and prune-kd one "train"
PATIENCE, MIN_GAIN = 4, 0.2  # examples/plateau.yaml
# issue 25's goals: wd's test BLEU at beam 4 against the teacher's, per preset; TINY also at
# >= 3x the teacher's onnxruntime int8 tokens/s (beam 4, batch 1); wd reaches teacher - 2 in at
# most 0.7x prune-kd's steps and leads prune-kd and kd by 0.5 (means over seeds)
WD_GAP = {"small": -0.5, "tiny": -1.5}
TINY_SPEED, STEPS_RATIO, LEAD = 3.0, 0.7, 0.5
SEEDS = {"wd": 2, "prune-kd": 2, "kd": 1}  # the finished seeds the issue asks for before judging a lead
DEV_LEVELS = (30, 33, 35)  # fixed dev BLEU levels whose first steps compare systems that never reach teacher − 2


def teacher_scores(teacher_dir: str, data: str, eval_sentences: int, cache: Path) -> dict:
    """The teacher's dev BLEU (greedy, the curves' pairs) and test BLEU (greedy, beam 4), cached."""
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    model, tokenizer = load_marian(teacher_dir)
    dev = read_parallel(data, "dev")[:eval_sentences]
    test = read_parallel(data, "test")
    scores = {"dev_bleu": dev_bleu_evaluator(tokenizer, dev, beams=1)(model)["dev_bleu"],  # as the curves score
              "dev_sentences": len(dev), "test_sentences": len(test), **bleu_on_test(model, tokenizer, test)}
    write_json(cache, scores)
    return scores


def bleu_on_test(model, tokenizer, test: list) -> dict:
    """Test BLEU in PyTorch, greedy and beam 4, as compress scores its student."""
    return torch_bleu(model, tokenizer, test, [1, 4], "test", progress=True)


def final_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a finished run kept of its last phase: the last is its final step, the last
    `average_last` are the ones its student is the mean of."""
    last_phase = [run_dir / p for p in PHASE_ORDER if (run_dir / p / "done.json").is_file()][-1]
    return checkpoint_dirs(last_phase)


def last_checkpoint_scores(root: Path, run: str, data: str) -> dict:
    """Test BLEU of a finished run's last checkpoint alone (its student is the mean of several)."""
    run_dir = root / f"{run}.run"
    checkpoint = final_checkpoints(run_dir)[-1]
    cache = run_dir / "last-checkpoint-test.json"
    name = str(checkpoint.relative_to(run_dir))
    if cache.is_file() and (cached := json.loads(cache.read_text(encoding="utf-8")))["checkpoint"] == name:
        return cached
    model, tokenizer = load_marian(root / run)
    load_trainable(model, checkpoint)
    scores = {"checkpoint": name, **bleu_on_test(model, tokenizer, read_parallel(data, "test"))}
    write_json(cache, scores)
    return scores


def curve(run_dir: Path) -> list[dict]:
    """Dev evaluations of a run, steps counted over its phases; each with the training minutes so far."""
    points, offset, seconds_before = [], 0, 0.0
    for phase in PHASE_ORDER:
        log = run_dir / phase / "log.jsonl"
        if not log.is_file():
            continue
        records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
        by_step = {r["step"]: r for r in records if "dev_bleu" in r}  # a resumed run may log a step twice
        seconds = {r["step"]: r["seconds"] for r in records if "seconds" in r}
        for step in sorted(by_step):
            done = max((s for s in seconds if s <= step), default=None)
            minutes = (seconds_before + (seconds[done] if done is not None else 0.0)) / 60
            points.append({"step": offset + step, "phase": phase, "dev_bleu": round(by_step[step]["dev_bleu"], 2),
                           "train_minutes": round(minutes, 1)})
        offset += max((r["step"] for r in records), default=0)
        seconds_before += max(seconds.values(), default=0.0)
    return points


def first_step(points: list[dict], target: float) -> int | None:
    return next((p["step"] for p in points if p["dev_bleu"] >= target), None)


def level_steps(points: list[dict]) -> str:
    """The first step at or above each of DEV_LEVELS, read from the curve (a recorded row keeps its curve)."""
    return " / ".join(cell(first_step(points, level), "{}") for level in DEV_LEVELS)


def plateau_point(points: list[dict]) -> dict | None:
    """The evaluation at which the run plateaued (PATIENCE evaluations without MIN_GAIN), if any."""
    scores = []
    for p in points:
        scores.append(p["dev_bleu"])
        if plateaued(scores, PATIENCE, MIN_GAIN):
            return p
    return None


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat), to see what else ran."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def package_scores(model_dir: Path, package: Path, data: str, shortlist: bool, measure: bool = True) -> dict | None:
    """One int8 package's size, test BLEU and tokens/s (1 thread, batch 1), cached in the package;
    `other_cpu` is the share of the machine's cores that other processes kept busy meanwhile.
    Without `measure`, only the cached figures of a package as new as its model (else None)."""
    from wdctl.export.build import export_model
    from wdctl.export.translator import PackageTranslator

    cache, graph = package / "plateau-onnx.json", package / "translator.onnx"
    # a package older than its model (a run trained on to a larger cap) is made again
    fresh = graph.is_file() and graph.stat().st_mtime >= (model_dir / "model.safetensors").stat().st_mtime
    if fresh and cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    if not measure:
        return None
    if not fresh:
        export_model(model_dir, package, quantize="int8", data=data, force=True, shortlist=shortlist, log=print)
    test = read_parallel(data, "test")
    sources, refs = [s for s, _ in test], [t for _, t in test]
    translator = PackageTranslator(package, threads=1)
    scores = {"measured": time.strftime("%Y-%m-%d %H:%M"), "isa_flags": cpu_info()["isa_flags"],
              "package_bytes": sum(f.stat().st_size for f in package.iterdir() if f.is_file())}
    for beams in (1, 4):
        translator.translate(sources[:8], beams=beams, batch_size=1)  # warm-up
        busy, own, started = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        out = translator.translate(sources, beams=beams, batch_size=1)
        seconds = time.perf_counter() - started
        other = busy_cpu_seconds() - busy - (time.process_time() - own)
        tokens = sum(len(ids) for ids in translator.tokenizer(text_target=out)["input_ids"])
        scores |= {f"bleu_beam{beams}": bleu(out, refs).score, f"tok_s_beam{beams}": round(tokens / seconds, 1),
                   f"other_cpu_beam{beams}": round(max(other, 0.0) / (seconds * os.cpu_count()), 2)}
    write_json(cache, scores)
    return scores


def onnx_scores(model_dir: Path, package: Path, data: str, measure: bool = True) -> dict | None:
    """The package `wdctl export --quantize int8` makes (shortlisted) and one without a shortlist;
    without `measure`, their cached figures where both have them (else None)."""
    scores = {"sl": package_scores(model_dir, package, data, shortlist=True, measure=measure),
              "full": package_scores(model_dir, package.with_name(package.name + "-full"), data, shortlist=False,
                                     measure=measure)}
    return scores if all(scores.values()) else None


def run_row(root: Path, run: str, teacher: dict, data: str) -> dict:
    run_dir = root / f"{run}.run"
    preset, rest = run.split("-", 1)
    system, seed = rest.rsplit("-s", 1)
    points = curve(run_dir)
    metrics_path = run_dir / "metrics.json"
    m = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    # a finished run trained on to a larger cap is under way again until its metrics are rewritten
    finished = bool(m) and bool(points) and sum(p["steps"] for p in m["phases"].values()) == points[-1]["step"]
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    phase2 = config.get("phase2", {})
    average_last = phase2.get("average_last", 1)
    tested, averaged, averaged_steps = (m if finished else {}), {}, None
    if finished and average_last > 1:  # compared on its last checkpoint, as the runs that kept only that; the mean beside
        tested, averaged = last_checkpoint_scores(root, run, data), m
        steps = [checkpoint_step(c) for c in final_checkpoints(run_dir)[-average_last:]]
        averaged_steps = [points[-1]["step"] - steps[-1] + s for s in (steps[0], steps[-1])]  # counted as the curve
    flat = plateau_point(points)
    best = max(points, key=lambda p: p["dev_bleu"]) if points else None
    start = "random" if config.get("method") == "kd" else config.get("start", "-")
    if config.get("refit_output"):
        start += " + refit"
    losses = {"KL": phase2.get("kd_weight"), "states": phase2.get("hidden_weight")}
    extra = ", ".join(f"{name} {w:g}" for name, w in losses.items() if w)  # loss terms beside the sequence-level data
    probes = [json.loads(p.read_text())["probe_loss"] for p in sorted(run_dir.glob("*/probe_before.json"))]
    return {
        "run": run, "preset": preset, "system": system, "seed": int(seed), "start": start, "extra_loss": extra,
        "finished": finished, "parameters": m.get("student_parameters"),
        "steps": points[-1]["step"] if points else 0, "train_minutes": points[-1]["train_minutes"] if points else 0,
        "plateau_step": flat and flat["step"], "plateau_minutes": flat and flat["train_minutes"],
        "best_dev_bleu": best and best["dev_bleu"], "best_step": best and best["step"],
        "steps_to_teacher_minus_2": first_step(points, teacher["dev_bleu"] - 2),
        "steps_to_teacher_minus_1": first_step(points, teacher["dev_bleu"] - 1),
        "test_bleu_beam1": tested.get("test_bleu_beam1"), "test_bleu_beam4": tested.get("test_bleu_beam4"),
        "average_last": average_last, "averaged_steps": averaged_steps, "averaged_test_bleu_beam1": averaged.get("test_bleu_beam1"),
        "averaged_test_bleu_beam4": averaged.get("test_bleu_beam4"),
        "probe_step0": next((p.get("probe_loss_before") for p in m.get("phases", {}).values()),
                            probes[0] if probes else None),
        "curve": points,
    }


def recorded_rows(previous: Path, live: set[str]) -> list[dict]:
    """The rows of an earlier table whose run directories are gone, as they were recorded."""
    if not previous.is_file():
        return []
    record = json.loads(previous.read_text(encoding="utf-8"))
    timings, cpu = record["teacher"].get("onnx"), record.get("cpu")
    return [r | {"recorded": True, "cpu": r.get("cpu", cpu)}
            | ({"teacher_onnx": r.get("teacher_onnx", timings)} if "onnx" in r else {})
            for r in record["rows"] if r["run"] not in live]


def teacher_timings(r: dict, teacher: dict) -> dict | None:
    """The teacher's int8 figures a run's package is compared with: those timed beside it (a
    recorded row: the timings of its day), else this table's (--onnx)."""
    return r.get("teacher_onnx") or teacher.get("onnx")


def speed(r: dict, teacher: dict, mode: str, beams: int) -> float:
    """A run's int8 tokens/s over the teacher's."""
    return r["onnx"][mode][f"tok_s_beam{beams}"] / teacher_timings(r, teacher)[mode][f"tok_s_beam{beams}"]


def onnx_table(rows: list[dict], teacher: dict) -> list[str]:
    """Finished runs in onnxruntime int8 against the teacher's packages, shortlisted and not."""
    if not rows:
        return []
    t = teacher.get("onnx") or teacher_timings(rows[0], teacher)  # the header: this table's, else a recorded row's

    def ratio(r: dict, beams: int) -> str:
        return " / ".join(f"{speed(r, teacher, m, beams):.2f}" for m in ("sl", "full"))

    def machine(r: dict) -> str:
        """The widest vector instructions of the CPU the run's package was timed on."""
        flags = r["onnx"]["sl"].get("isa_flags") or (r.get("cpu") or {}).get("isa_flags", [])
        return next((f.upper() for f in ("avx512_vnni", "avx512f", "avx2") if f in flags), "-")

    def busy(o: dict) -> str:
        return f"{max(o[m][f'other_cpu_beam{b}'] for m in ('sl', 'full') for b in (1, 4)):.2f}"

    lines = ["onnxruntime int8 (`wdctl export --quantize int8 --data DATA`: calibrated, shortlisted; and the same "
             "with `--no-shortlist`), in-graph search, 1 thread, batch 1, all test pairs. × teacher: tokens/s over "
             "the teacher's package of the same kind. Teacher: "
             f"{t['sl']['package_bytes'] / 2**20:.1f} MiB, BLEU {t['sl']['bleu_beam1']:.2f} / "
             f"{t['sl']['bleu_beam4']:.2f}, {t['sl']['tok_s_beam1']:.0f} / {t['sl']['tok_s_beam4']:.0f} tok/s "
             f"greedy / beam 4 (without the shortlist {t['full']['tok_s_beam1']:.0f} / {t['full']['tok_s_beam4']:.0f}). "
             f"Busy: the largest share of the cores other processes used while a package was timed (teacher {busy(t)}).", "",
             "| run | parameters | package MiB | test greedy | test beam 4 (Δ teacher) | × teacher greedy "
             "(sl / full) | × teacher beam 4 (sl / full) | busy | timed on |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        o = r["onnx"]
        sl = o["sl"]
        name = r["run"] + (f" (mean of last {r['average_last']})" if r.get("average_last", 1) > 1 else "")
        lines.append(f"| {name} | {r['parameters'] / 1e6:.2f} M | {sl['package_bytes'] / 2**20:.1f} | "
                     f"{sl['bleu_beam1']:.2f} | {sl['bleu_beam4']:.2f} "
                     f"({sl['bleu_beam4'] - teacher_timings(r, teacher)['sl']['bleu_beam4']:+.2f}) | "
                     f"{ratio(r, 1)} | {ratio(r, 4)} | {busy(o)} | {machine(r)} |")
    return lines + [""]


def averaging_table(rows: list[dict]) -> list[str]:
    """Finished runs whose student is the mean of their last checkpoints, against the last alone."""
    rows = [r for r in rows if r.get("averaged_test_bleu_beam4") is not None]
    if not rows:
        return []
    lines = ["The mean of the last checkpoints (the student compress writes) against the last checkpoint alone "
             "(the figure in the tables above), test BLEU, PyTorch:", "",
             "| run | checkpoints (steps) | last: greedy / beam 4 | mean: greedy / beam 4 | Δ greedy / beam 4 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        last = [r[f"test_bleu_beam{b}"] for b in (1, 4)]
        mean = [r[f"averaged_test_bleu_beam{b}"] for b in (1, 4)]
        span = f" ({r['averaged_steps'][0]:,}–{r['averaged_steps'][1]:,})" if r.get("averaged_steps") else ""
        lines.append(f"| {r['run']} | {r['average_last']}{span} | {last[0]:.2f} / {last[1]:.2f} | {mean[0]:.2f} / "
                     f"{mean[1]:.2f} | {mean[0] - last[0]:+.2f} / {mean[1] - last[1]:+.2f} |")
    return lines + [""]


def mean_range(values: list) -> tuple[float, float, float] | None:
    values = [v for v in values if v is not None]
    return (sum(values) / len(values), min(values), max(values)) if values else None


def spread(stat: tuple[float, float, float] | None, fmt: str = "{:.2f}") -> str:
    """The mean, with the range of the seeds when there are several."""
    if stat is None:
        return "-"
    mean, low, high = stat
    return fmt.format(mean) + ("" if low == high else f" ({fmt.format(low)}–{fmt.format(high)})")


def system_stats(rows: list[dict], teacher: dict) -> dict[str, dict]:
    """Per system, over its finished seeds: test BLEU, steps to teacher − 2, and the shortlisted
    package's beam-4 speed over the teacher's."""
    stats: dict[str, dict] = {}
    for r in (r for r in rows if r["finished"]):
        stats.setdefault(r["system"], {"runs": []})["runs"].append(r)
    for s in stats.values():
        runs = s["runs"]
        s |= {key: mean_range([r[key] for r in runs]) for key in
              ("test_bleu_beam1", "test_bleu_beam4", "steps_to_teacher_minus_2", "best_dev_bleu")}
        s["speed_beam4"] = mean_range([speed(r, teacher, "sl", 4) for r in runs
                                       if "onnx" in r and teacher_timings(r, teacher)])
    return stats


def systems_table(stats: dict[str, dict]) -> list[str]:
    if not stats:
        return []
    lines = ["Finished runs by system: mean over seeds (range).", "",
             "| system | seeds | test greedy | test beam 4 | steps to teacher − 2 | best dev |",
             "|---|---|---:|---:|---:|---:|"]
    for system, s in stats.items():
        lines.append(f"| {system} | {', '.join(str(r['seed']) for r in s['runs'])} | {spread(s['test_bleu_beam1'])} | "
                     f"{spread(s['test_bleu_beam4'])} | {spread(s['steps_to_teacher_minus_2'], '{:.0f}')} | "
                     f"{spread(s['best_dev_bleu'])} |")
    return lines + [""]


def goal_lines(preset: str, stats: dict[str, dict], teacher: dict) -> list[str]:
    """Issue 25's goals for one preset, from the finished runs: each with its figure and met / missed."""
    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    def mean(system: str, key: str) -> float | None:
        stat = stats.get(system, {}).get(key)
        return stat and stat[0]

    def seeds(system: str) -> int:
        return len(stats.get(system, {}).get("runs", []))

    lines = []
    wd_beam4 = mean("wd", "test_bleu_beam4")
    if wd_beam4 is not None:
        gap = wd_beam4 - teacher["test_bleu_beam4"]
        line = f"- wd − teacher, test beam 4: {gap:+.2f} (goal ≥ {WD_GAP[preset]:+.1f}"
        ok = gap >= WD_GAP[preset]
        wd_speed = mean("wd", "speed_beam4")
        if preset == "tiny":
            line += f", at ≥ {TINY_SPEED:.0f}x the teacher's int8 tokens/s: {'-' if wd_speed is None else f'{wd_speed:.2f}x'}"
            ok = ok and wd_speed is not None and wd_speed >= TINY_SPEED
        lines.append(f"{line}): {verdict(ok)}")

    def missing(system: str) -> int:
        """Finished seeds of `system` that never reached teacher − 2 (the mean leaves them out)."""
        return sum(r["steps_to_teacher_minus_2"] is None for r in stats.get(system, {}).get("runs", []))

    wd_steps, prune_steps = mean("wd", "steps_to_teacher_minus_2"), mean("prune-kd", "steps_to_teacher_minus_2")
    if wd_steps and prune_steps:
        ratio = wd_steps / prune_steps
        never = "".join(f"; {s}: {missing(s)} of {seeds(s)} seeds never reached it" for s in ("wd", "prune-kd")
                        if missing(s))
        lines.append(f"- steps to teacher − 2, wd / prune-kd: {wd_steps:.0f} / {prune_steps:.0f} = {ratio:.2f}x "
                     f"(goal ≤ {STEPS_RATIO}x{never}): {verdict(ratio <= STEPS_RATIO and not missing('wd'))}")
    elif "wd" in stats and wd_steps is None:
        lines.append(f"- steps to teacher − 2: wd did not reach it (best dev {mean('wd', 'best_dev_bleu'):.2f}, "
                     f"teacher − 2 = {teacher['dev_bleu'] - 2:.2f}): {verdict(False)}")
    for other in ("prune-kd", "kd"):
        theirs = mean(other, "test_bleu_beam4")
        if wd_beam4 is not None and theirs is not None:
            lead = wd_beam4 - theirs
            enough = seeds("wd") >= SEEDS["wd"] and seeds(other) >= SEEDS[other]
            lines.append(f"- wd − {other}, test beam 4: {lead:+.2f} (goal ≥ +{LEAD}, means over seeds; "
                         f"seeds: {seeds('wd')} / {seeds(other)}, the issue asks {SEEDS['wd']} / {SEEDS[other]}): "
                         f"{verdict(lead >= LEAD) if enough else 'open until both have their seeds'}")
    return ["Goals (issue 25):", "", *lines, ""] if lines else []


def cell(value, fmt="{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def plot(rows: list[dict], teacher: dict, presets: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(presets), figsize=(6.5 * len(presets), 4.5), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        for r in (r for r in rows if r["preset"] == preset and r["curve"]):
            ax.plot([p["step"] for p in r["curve"]], [p["dev_bleu"] for p in r["curve"]], marker=".", label=r["run"])
        for gap, style in ((0, "-"), (1, "--"), (2, ":")):
            ax.axhline(teacher["dev_bleu"] - gap, color="grey", linestyle=style, linewidth=0.8,
                       label="teacher" if gap == 0 else f"teacher − {gap}")
        ax.set_title(preset.upper())
        ax.set_xlabel("optimizer steps (both phases)")
        ax.set_ylabel(f"dev BLEU, greedy, {teacher['dev_sentences']} sentences")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="examples/teacher")
    ap.add_argument("--data", default="examples/data/bible")
    ap.add_argument("--root", type=Path, default=Path("runs/plateau"))
    ap.add_argument("--out", type=Path, default=Path("examples/results/plateau"))
    ap.add_argument("--eval-sentences", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", action="store_true", help="also export and score each finished run in onnxruntime int8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    runs = sorted(p.name[: -len(".run")] for p in args.root.glob("*-s*.run") if p.is_dir())
    recorded = recorded_rows(args.out / "plateau.json", set(runs))
    if not runs and not recorded:
        sys.exit(f"{args.root}: no runs of examples/plateau_recipe.sh")
    teacher = teacher_scores(args.teacher, args.data, args.eval_sentences, args.root / "teacher-eval.json")
    rows = sorted([run_row(args.root, run, teacher, args.data) for run in runs] + recorded, key=lambda r: r["run"])
    # without --onnx, the figures an earlier --onnx cached in packages still as new as their models
    if teacher_onnx := onnx_scores(Path(args.teacher), args.root / "teacher.pkg", args.data, args.onnx):
        teacher["onnx"] = teacher_onnx
    for r in (r for r in rows if r["finished"] and not r.get("recorded")):
        if scores := onnx_scores(args.root / r["run"], args.root / f"{r['run']}.pkg", args.data, args.onnx):
            r["onnx"] = scores
    presets = [p for p in ("small", "tiny") if any(r["preset"] == p for r in rows)]

    lines = [
        f"# Students trained to a plateau (teacher `{args.teacher}`, data `{args.data}`)",
        "",
        f"Dev BLEU: greedy, first {teacher['dev_sentences']} dev pairs, every 250 steps (PyTorch). Plateau: no "
        f"gain above {MIN_GAIN} BLEU over {PATIENCE} evaluations. Teacher: dev {teacher['dev_bleu']:.2f}, test "
        f"{teacher['test_bleu_beam1']:.2f} greedy / {teacher['test_bleu_beam4']:.2f} beam 4 "
        f"({teacher['test_sentences']} test pairs). Test BLEU is PyTorch, all test pairs; a run still training "
        "shows its curve so far. Minutes are training time (2 threads), summed over resumptions. Finished "
        "\"recorded\" / \"stopped\": the run's directory is gone (a fresh machine); its row is the one the previous "
        "plateau.json recorded (finished, its speed against the teacher timed beside it then; or cut off while "
        "training, its curve so far). A system ending in -kl adds a word-level KL term to the teacher's "
        "distribution (`--kd-weight`; \"extra loss\" in the tables) beside the sequence-level data.",
        "",
    ]
    for preset in presets:
        lines += [f"## {preset.upper()}", "",
                  "| run | start (extra loss) | finished | steps | plateau at (min) | best dev (step) | steps to teacher − 2 / − 1 "
                  f"| steps to dev {' / '.join(map(str, DEV_LEVELS))} "
                  "| test greedy | test beam 4 (Δ teacher) | step-0 probe |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["preset"] == preset):
            flat = "-" if r["plateau_step"] is None else f"{r['plateau_step']} ({r['plateau_minutes']:.0f})"
            beam4 = r["test_bleu_beam4"]
            finished = ("recorded" if r["finished"] else "stopped") if r.get("recorded") else \
                "yes" if r["finished"] else "training"
            delta = "-" if beam4 is None else f"{beam4:.2f} ({beam4 - teacher['test_bleu_beam4']:+.2f})"
            lines.append(
                f"| {r['run']} | {r['start']}{f' ({x})' if (x := r.get('extra_loss')) else ''} | {finished} | {r['steps']} | {flat} | "
                f"{cell(r['best_dev_bleu'])} ({cell(r['best_step'], '{}')}) | {cell(r['steps_to_teacher_minus_2'], '{}')} / "
                f"{cell(r['steps_to_teacher_minus_1'], '{}')} | {level_steps(r['curve'])} | {cell(r['test_bleu_beam1'])} | {delta} | "
                f"{cell(r['probe_step0'], '{:.3f}')} |")
        lines.append("")
        stats = system_stats([r for r in rows if r["preset"] == preset], teacher)
        lines += systems_table(stats) + goal_lines(preset, stats, teacher)
        lines += averaging_table([r for r in rows if r["preset"] == preset])
        lines += onnx_table([r for r in rows if r["preset"] == preset and "onnx" in r], teacher)
    lines += ["![dev BLEU against steps](curves.png)", "",
              f"Made by `python examples/plateau_table.py --root {args.root} --out {args.out}{' --onnx' if args.onnx else ''}` from the runs of "
              "`examples/plateau_recipe.sh`; every curve is in plateau.json."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plateau.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_json(args.out / "plateau.json", {"teacher": teacher, "rows": rows, "patience": PATIENCE,
                                           "min_gain": MIN_GAIN, "cpu": cpu_info(), "versions": versions()})
    plot(rows, teacher, presets, args.out / "curves.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
