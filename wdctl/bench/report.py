"""The bench report: report.json (every figure), report.md (for people) and bleu_vs_speed.png.

`write_report(directory, report)` takes the dict `wdctl.bench.run.run_bench` builds and
writes the three files into `directory`. Rendering never measures anything, so a report can
be re-rendered from its report.json (`render_markdown(json.load(...))`).
"""

from __future__ import annotations

from pathlib import Path

from wdctl.core.atomic import atomic_write_text
from wdctl.core.runinfo import write_json
from wdctl.export.session import AMX_SLOWER_UP_TO_ROWS

PLOT_NAME = "bleu_vs_speed.png"
BACKEND_MARKERS = {"torch": "o", "ort-optimum": "D", "ort-graph": "v", "ort-graph-int8": "P",
                   "ort-graph-int8-sl": "X", "ct2": "*", "ct2-vmap": "p"}
SHOWN_VERSIONS = ("wdctl", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
                  "onnxruntime-gpu", "ctranslate2", "sacrebleu", "tokenizers", "sentencepiece")


def write_report(directory: Path, report: dict) -> None:
    directory = Path(directory)
    report["files"] = {"markdown": "report.md", "json": "report.json", "plot": PLOT_NAME}
    plot_bleu_vs_speed(report, directory / PLOT_NAME)
    write_json(directory / "report.json", report)
    atomic_write_text(directory / "report.md", render_markdown(report))


# --- groups -----------------------------------------------------------------------------------

def groups(rows: list[dict]) -> list[tuple[tuple[int, int, int], list[dict]]]:
    """Rows grouped by (threads, beams, batch size), in the order they were measured."""
    out: dict[tuple[int, int, int], list[dict]] = {}
    for row in rows:
        out.setdefault((row["threads"], row["beams"], row["batch_size"]), []).append(row)
    return list(out.items())


def group_title(key: tuple[int, int, int], many_threads: bool) -> str:
    threads, beams, batch = key
    decoding = "greedy (beam 1)" if beams == 1 else f"beam {beams}"
    title = f"{decoding}, batch {batch}"
    if many_threads or threads != 1:
        title += f", {threads} thread{'s' if threads != 1 else ''}"
    return title


# --- markdown ---------------------------------------------------------------------------------

def busy(loads: list[float], cores: int | None) -> bool:
    """True when the load average says something else competed for the cores while measuring."""
    return bool(loads) and max(loads) > 1.0 + 0.5 * (cores or 1)


def _num(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"


def _range(spread: dict | None, digits: int = 1) -> str:
    if not spread:
        return "–"
    if spread["min"] == spread["max"]:
        return _num(float(spread["median"]), digits)
    return f"{_num(float(spread['median']), digits)} ({_num(float(spread['min']), digits)}–{_num(float(spread['max']), digits)})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _result_rows(rows: list[dict], batch: int) -> tuple[list[str], list[list[str]]]:
    header = ["system", "backend", "BLEU", "chrF", "sent/s", "target tok/s (min–max)"]
    if batch == 1:
        header += ["p50 ms", "p90 ms"]
    header += ["peak RSS MB", "size MB", "× teacher, same backend", "× teacher PyTorch fp32"]
    body = []
    for r in rows:
        if r["status"] != "ok":
            cells = [r["system"], r["backend_label"], f"failed: {r['error']}"] + [""] * (len(header) - 3)
            body.append(cells)
            continue
        cells = [r["system"], r["backend_label"], _num(r["bleu"], 2), _num(r["chrf"], 2),
                 _num(r["sentences_per_s"]["median"], 2), _range(r["tokens_per_s"], 0)]
        if batch == 1:
            lat = r.get("latency_ms") or {}
            cells += [_num(lat.get("p50"), 1), _num(lat.get("p90"), 1)]
        speed = [r["speedup_vs_teacher_same_backend"], r["speedup_vs_teacher_torch"]]
        cells += [_num(r["peak_rss_mb"], 0), _num(r["size_mb"], 1)] + [_num(s, 2, "×") for s in speed]
        if r.get("stable") is False:
            cells[1] += " †"
        body.append(cells)
    return header, body


def _device(settings: dict) -> str:
    """The device row; reports written before `--device` existed ran on the CPU."""
    text = settings.get("device", "cpu")
    if settings.get("skipped_backends"):
        text += f" ({', '.join(settings['skipped_backends'])} left out: CPU only)"
    return text


def render_markdown(report: dict) -> str:
    s, data, machine = report["settings"], report["data"], report.get("machine", {})
    rows = report["rows"]
    lines = ["# wdctl bench report", ""]
    if report.get("command"):
        lines += [f"Produced by `{report['command']}`" + (f" on {report['created']}" if report.get("created") else "")
                  + (f" in {report['wall_seconds'] / 60:.1f} min." if report.get("wall_seconds") else "."), ""]
    lines += ["## Settings", ""]
    repeats = s["repeats"]
    settings_rows = [
        ["test data", f"{data['spec']} (split {data['split']}), first {data['sentences']} sentences"
         if s.get("max_sentences") else f"{data['spec']} (split {data['split']}), {data['sentences']} sentences"],
        ["beams", ", ".join(map(str, s["beams"]))],
        ["batch sizes", ", ".join(map(str, s["batch_sizes"]))],
        ["threads", ", ".join(map(str, s["threads"])) + " (OMP_NUM_THREADS, ORT intra-op without spinning, "
                                                         "CTranslate2 intra_threads; the in-graph and CTranslate2 "
                                                         "workers never load torch, optimum's holds it to 1 thread)"],
        ["timing", f"{repeats} timed pass{'es' if repeats != 1 else ''} over all sentences after {s['warmup']}; "
                   "one fresh process per row; figures are the median pass (min–max over passes)"],
        ["output length", f"at most min({s['max_length']}, 1.5 × source tokens + 10), each sentence from its own "
                          f"source (CTranslate2: the longest source of its batch); length penalty "
                          f"{s['length_penalty']}"],
        ["BLEU", f"`{report['metrics'].get('bleu')}`"],
        ["chrF", f"`{report['metrics'].get('chrf')}`"],
        ["device", _device(s)],
        ["quick mode", "yes (smoke run: figures are not meaningful)" if s.get("quick") else "no"],
    ]
    lines += _table(["setting", "value"], settings_rows) + [""]

    lines += ["## Machine and versions", ""]
    flags = ", ".join(machine.get("isa_flags", [])) or "–"
    mem = f", {machine['memory_gb']} GiB RAM" if machine.get("memory_gb") else ""
    lines += [f"- CPU: {machine.get('model', '?')} ({machine.get('cores', '?')} cores{mem}); ISA flags: {flags}",
              f"- Python {machine.get('python', '?')} on {machine.get('machine', '?')}"]
    if machine.get("gpu"):
        lines.append(f"- GPU: {machine['gpu']}")
    loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
    if loads:
        line = f"- 1-minute load average while measuring (the worker itself counts 1): {min(loads):.1f}–{max(loads):.1f}"
        if busy(loads, machine.get("cores")):
            line += (" — **other processes were running: the speed figures are unreliable; rerun on an idle "
                     "machine**")
        lines.append(line)
    refused = sum(r.get("amx") == "refused" for r in rows)
    if refused:
        lines.append(f"- Intel AMX refused in {refused} in-graph measurement(s), those with searches of at most "
                     f"{AMX_SLOWER_UP_TO_ROWS} rows: their int8 products run on AVX-512 VNNI, faster there "
                     "(`wdctl.core.amx`)")
    versions = report.get("versions", {})
    shown = [f"{name} {versions[name]}" for name in SHOWN_VERSIONS if name in versions]
    lines += ["- " + " · ".join(shown), ""]

    lines += ["## Systems", ""]
    system_rows = []
    for system in report["systems"]:
        packages = ", ".join(f"{k}: `{v}`" for k, v in system["packages"].items()) or "–"
        system_rows.append([system["name"], system["role"], f"{system['parameters']:,}", f"`{system['model_dir']}`",
                            packages])
    lines += _table(["system", "role", "parameters", "model directory", "packages"], system_rows) + [""]

    lines += ["## Results", ""]
    many_threads = len(s["threads"]) > 1
    for key, group in groups(rows):
        lines += [f"### {group_title(key, many_threads)}", ""]
        header, body = _result_rows(group, key[2])
        lines += _table(header, body) + [""]
    lines += [
        "Columns: BLEU/chrF with sacreBLEU (signatures above) on the saved hypotheses; sent/s = sentences "
        "per second of the median pass; target tok/s = the hypotheses' subword tokens (model tokenizer, no "
        "special tokens) per second; p50/p90 = per-sentence latency at batch 1; peak RSS = the worker "
        "process's maximum resident memory (includes the Python runtime and libraries); size = the weight "
        "files that backend loads (tokenizer excluded); × teacher = sentences/s relative to the teacher in "
        "the same backend, and to the teacher in PyTorch fp32, on the same settings.",
        "",
    ]
    if any(r.get("stable") is False for r in rows):
        lines += ["† the timed passes did not all produce the same hypotheses (the last pass is scored).", ""]
    if report.get("notes"):
        lines += ["Notes:", ""] + [f"- {note}" for note in report["notes"]] + [""]
    lines += [f"![BLEU vs target tokens/s]({PLOT_NAME})", ""]
    return "\n".join(lines)


# --- plot -------------------------------------------------------------------------------------

def plot_bleu_vs_speed(report: dict, path: Path) -> None:
    """BLEU against target tokens/s (log x), one panel per beam/batch/threads setting;
    colour = system, marker = backend; horizontal bars = min–max over the timed passes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ok = [r for r in report["rows"] if r["status"] == "ok"]
    keyed = groups(ok)
    systems = [s["name"] for s in report["systems"]]
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(systems)}
    n = max(1, len(keyed))
    cols = min(2, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(max(8.0, 6.0 * cols), 4.2 * nrows + 1.0), squeeze=False)
    many_threads = len(report["settings"]["threads"]) > 1
    for ax in axes.flat[len(keyed):]:
        ax.set_visible(False)
    if not keyed:
        axes[0][0].set_visible(True)
        axes[0][0].text(0.5, 0.5, "no successful measurements", ha="center", va="center")
        axes[0][0].set_axis_off()
    for ax, (key, rows) in zip(axes.flat, keyed):
        for r in rows:
            tps = r["tokens_per_s"]
            x = max(tps["median"], 1e-3)
            xerr = [[max(x - tps["min"], 0.0)], [max(tps["max"] - x, 0.0)]]
            ax.errorbar(x, r["bleu"], xerr=xerr, fmt=BACKEND_MARKERS.get(r["backend"], "o"),
                        color=colors.get(r["system"], "black"), markersize=8, capsize=2, alpha=0.9)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("target tokens/s (log scale)")
        ax.set_ylabel("BLEU")
        ax.set_title(group_title(key, many_threads))
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colors[name], marker="o", linestyle="", label=name) for name in systems]
    backends = list(dict.fromkeys(r["backend"] for r in ok))
    handles += [Line2D([], [], color="gray", marker=BACKEND_MARKERS.get(b, "o"), linestyle="",
                       label=report.get("backends", {}).get(b, b)) for b in backends]
    ncol = 3
    legend_rows = (len(handles) + ncol - 1) // ncol
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize="small", frameon=False)
    fig.suptitle("BLEU vs speed (colour: system, marker: backend)")
    fig.tight_layout(rect=(0, min(0.5, (0.25 * legend_rows + 0.15) / height), 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
