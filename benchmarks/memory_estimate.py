"""Peak resident memory of `wdctl compress` phase 1 and phase 2 against the memory estimate that
`wdctl inspect` prints and the resource guard uses (`GroupPlan.phase_memory`).

For each teacher, student preset and --max-tokens value, one `wdctl compress` run in its own
process (a few steps per phase, no dev evaluation, no export) on the bundled Bible corpus:

    wdctl compress TEACHER --data examples/data/bible/train.en-es.tsv.gz --student PRESET
        --max-tokens N --phase1-steps K --phase2-steps K --eval-sentences 0 --no-export
        --distill-sentences 4 --distill-beams 1 --distill-cache WORK/cache --threads 2

Teachers: the bundled `examples/teacher` (d 256, 6+6 layers, 8,000 pieces) and an
opus-mt-en-de-shaped teacher with random weights (d 512, 6+6 layers, 8 heads, FFN 2048, a
shared vocabulary of 58,101 pieces with tied embeddings; `tests/test_opus_shape.py`'s config),
written into WORK with the bundled tokenizer's pieces padded to 58,101 ids (<pad> last, as in
OPUS-MT): the shapes, not the weights, decide the memory.

Per phase it reads from the run's metrics.json the estimate (`memory_check.phases`, the figure
`wdctl inspect --max-tokens N` prints) and the measured peak RSS (`phases.*.peak_rss_mb`: the
process's high-water mark from the phase's start, which includes the runtime, the teacher and
the data), and writes their ratio to OUT/memory_estimate.{md,json} with the command line, the
machine and its load. Memory only: nothing here is timed, so a busy machine changes no figure
but the wall time.

    nice -n 15 .venv/bin/python benchmarks/memory_estimate.py --note "busy: a background run"
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples/data/bible/train.en-es.tsv.gz"
WDCTL = [sys.executable, "-m", "wdctl"]


def opus_teacher(path: Path) -> Path:
    """An opus-mt-en-de-shaped MarianMT directory with random weights and the bundled tokenizer."""
    if (path / "model.safetensors").is_file():
        return path
    import torch
    from transformers import MarianMTModel

    sys.path.insert(0, str(ROOT / "tests"))
    from test_opus_shape import PAD, VOCAB, opus_mt_config

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    bundled = ROOT / "examples/teacher"
    for name in ("source.spm", "target.spm", "special_tokens_map.json"):
        shutil.copy(bundled / name, tmp / name)
    vocab = json.loads((bundled / "vocab.json").read_text(encoding="utf-8"))
    old_pad = vocab.pop("<pad>")
    vocab[f"<extra_{old_pad}>"] = old_pad
    vocab.update({f"<extra_{i}>": i for i in range(len(vocab), VOCAB - 1)})
    vocab["<pad>"] = PAD
    assert sorted(vocab.values()) == list(range(VOCAB))
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = json.loads((bundled / "tokenizer_config.json").read_text(encoding="utf-8"))
    added = {k: v for k, v in tokenizer["added_tokens_decoder"].items() if v["content"] != "<pad>"}
    added[str(PAD)] = {"content": "<pad>", "lstrip": False, "normalized": False, "rstrip": False,
                       "single_word": False, "special": True}
    tokenizer["added_tokens_decoder"] = added
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2), encoding="utf-8")
    torch.manual_seed(0)
    model = MarianMTModel(opus_mt_config())
    model.generation_config.update(bad_words_ids=[[PAD]], decoder_start_token_id=PAD, pad_token_id=PAD,
                                   eos_token_id=0, forced_eos_token_id=0, max_length=256, num_beams=4)
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(path)
    return path


def machine() -> dict:
    from wdctl.core.runinfo import cpu_info, versions

    import psutil

    return {"cpu": cpu_info(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average": [round(x, 2) for x in os.getloadavg()], "versions": versions()}


def run(label: str, teacher: Path, preset: str, max_tokens: int, steps: int, work: Path, flags: list[str]) -> dict:
    """One compress run; the estimate and the measured peak per phase. `flags`: compress's loss
    flags (--kd-weight, --hidden-weight: a teacher forward on every step) and --precision."""
    name = f"{label}-{preset}-{max_tokens}"
    out, run_dir = work / name, work / f"{name}.run"
    inspect = [*WDCTL, "inspect", str(teacher), "--student", preset, "--max-tokens", str(max_tokens), *flags]
    printed = subprocess.run(inspect, capture_output=True, text=True, check=True).stdout
    command = [*WDCTL, "compress", str(teacher), "--data", str(DATA), "--out", str(out), "--run-dir", str(run_dir),
               "--student", preset, "--max-tokens", str(max_tokens), "--phase1-steps", str(steps),
               "--phase2-steps", str(steps), "--eval-sentences", "0", "--no-export", "--distill-sentences", "4",
               "--distill-beams", "1", "--distill-cache", str(work / "cache"), "--threads", "2", "--force", *flags]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    phases = {}
    for phase, estimate in metrics["memory_check"]["phases"].items():
        measured = metrics["phases"][phase]
        phases[phase] = {"estimate_mib": round(estimate["total_bytes"] / 2**20),
                         "estimate_parts_mib": {k: round(v / 2**20) for k, v in estimate["bytes"].items()},
                         "precision": estimate["precision"], "peak_rss_mib": round(measured["peak_rss_mb"]),
                         "start_rss_mib": round(measured["start_rss_mb"]), "steps": measured["steps"],
                         "ratio": round(measured["peak_rss_mb"] / (estimate["total_bytes"] / 2**20), 3)}
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"teacher": label, "preset": preset, "max_tokens": max_tokens, "phases": phases,
            "inspect": [line for line in printed.splitlines() if "memory estimate" in line],
            "command": " ".join(command[2:]).replace(str(work), "WORK").replace(str(ROOT) + "/", ""),
            "wall_seconds": round(time.perf_counter() - started)}


def table(rows: list[dict]) -> str:
    lines = ["| teacher | student | --max-tokens | phase | estimate (MiB) | peak RSS (MiB) | peak / estimate |",
             "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        for phase, p in r["phases"].items():
            lines.append(f"| {r['teacher']} | {r['preset']} | {r['max_tokens']} | {phase} | {p['estimate_mib']:,} "
                         f"| {p['peak_rss_mib']:,} | {p['ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", default="bundled,opus-mt", help="bundled, opus-mt (comma-separated)")
    parser.add_argument("--presets", default="small,tiny")
    parser.add_argument("--max-tokens", default="1000,2500")
    parser.add_argument("--steps", type=int, default=5, help="steps per phase (the peak comes within the first few)")
    parser.add_argument("--precision", default=None, help="compress --precision (default: compress's auto)")
    parser.add_argument("--kd-weight", type=float, default=0.0, help="compress --kd-weight (word-level KL to the teacher)")
    parser.add_argument("--hidden-weight", type=float, default=0.0, help="compress --hidden-weight (intermediate states)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wdctl-memory-estimate"))
    parser.add_argument("--out", type=Path, default=ROOT / "examples/results/memory-estimate")
    parser.add_argument("--note", default="", help="machine state to record, e.g. 'busy: a background training run'")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    teachers = {"bundled": ROOT / "examples/teacher", "opus-mt": args.work / "opus-mt-teacher"}
    before = machine()
    flags = [flag for name, w in (("--kd-weight", args.kd_weight), ("--hidden-weight", args.hidden_weight)) if w
              for flag in (name, f"{w:g}")] + (["--precision", args.precision] if args.precision else [])
    rows = []
    for name in args.teachers.split(","):
        teacher = opus_teacher(teachers[name]) if name == "opus-mt" else teachers[name]
        for preset in args.presets.split(","):
            for max_tokens in map(int, args.max_tokens.split(",")):
                rows.append(run(name, teacher, preset, max_tokens, args.steps, args.work, flags))
                print(table(rows[-1:]).splitlines()[-2:], flush=True)
    ratios = [p["ratio"] for r in rows for p in r["phases"].values()]
    result = {"command": "python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "note": args.note,
              "machine_before": before, "machine_after": machine(), "rows": rows,
              "ratio_range": [min(ratios), max(ratios)]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory_estimate.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = [f"# Memory estimate vs peak RSS ({time.strftime('%Y-%m-%d')})", "",
          "Per phase of a short `wdctl compress` run (a few steps each; the peak comes within the first few), the",
          "estimate that `wdctl inspect --max-tokens N` prints and the resource guard uses, against the phase's",
          "measured peak RSS (the process's high-water mark from the phase's start). Written by:", "",
          f"    {result['command']}", "",
          f"The runs (teacher, preset and --max-tokens varied), the first: `{rows[0]['command']}`.",
          "The opus-mt teacher is opus-mt-en-de-shaped with random weights (d 512, 6+6 layers, 58,101 pieces, "
          "tied embeddings).", "",
          table(rows), "",
          f"peak / estimate: {min(ratios):.2f} to {max(ratios):.2f}.", "",
          f"Machine: {before['cpu']['model']}, {before['cpu']['cores']} cores, {before['memory_gib']} GiB; "
          f"load average {before['load_average']} before, {result['machine_after']['load_average']} after"
          + (f"; {args.note}" if args.note else "") + ". Memory only: the load changes no figure here."]
    (args.out / "memory_estimate.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'memory_estimate.md'}")


if __name__ == "__main__":
    main()
