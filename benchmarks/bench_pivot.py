"""Pivot a `wdctl bench` report.json into one row per system and backend (the README's table).

    python benchmarks/bench_pivot.py runs/bench-readme/report.json

Each cell: BLEU / median target tokens/s (min–max over the timed passes when there are several).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(row: dict | None) -> str:
    if row is None or row["status"] != "ok":
        return "—"
    tps = row["tokens_per_s"]
    spread = f" ({tps['min']:,.0f}–{tps['max']:,.0f})" if row["repeats"] > 1 else ""
    return f"{row['bleu']:.2f} / {tps['median']:,.0f}{spread}"


def pivot(report: dict) -> str:
    rows = report["rows"]
    settings = sorted({(r["beams"], r["batch_size"]) for r in rows})
    header = ["system", "backend", "size MB"] + [
        f"{'greedy' if beams == 1 else f'beam {beams}'} bs {bs}: BLEU / tok/s" for beams, bs in settings]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    keys = list(dict.fromkeys((r["system"], r["backend"]) for r in rows))
    for system, backend in keys:
        found = {(r["beams"], r["batch_size"]): r for r in rows if (r["system"], r["backend"]) == (system, backend)}
        first = next(iter(found.values()))
        size = f"{first['size_mb']:.1f}" if first.get("size_mb") else "—"
        lines.append("| " + " | ".join([system, first["backend_label"], size] + [cell(found.get(s)) for s in settings])
                     + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/bench_pivot.py REPORT.json")
    print(pivot(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
