"""`wdctl bench`: speed, size and quality of a teacher and its students, backend by backend.

The bench's room: `settings` (flags, validated), `packages` (the package cache, built by
`wdctl.export.build`), this module (the plan of measurements, running them, scoring them),
`worker` (one measurement in its own process) and `report` (report.md/json and the plot).

Order of work (everything cheap is checked before anything heavy runs):

1. Settings (`wdctl.bench.settings`): flags parsed and validated (`InputError`, exit 2): model directories, the test
   data, beams, batch sizes, threads, backends, the device (with `--device cuda`, that the
   libraries the chosen backends load can reach a GPU), the output directory.
2. Systems: the teacher and each student (names unique; parameters counted).
3. Packages (`wdctl.bench.packages`): every system exported once to ONNX fp32 and int8 and
   to CTranslate2 int8 when `ctranslate2` is importable, in a cache
   (`OUT/packages/NAME-fp32|int8|ct2` by default) that later runs reuse.
4. Measurements: one subprocess (`python -m wdctl.bench.worker`) per
   threads × beam × batch size × system × backend, one at a time, under a progress bar. The
   worker warms up, times `repeats` passes over the same sentences and writes its hypotheses;
   this process scores them (sacrebleu BLEU and chrF against the references).
5. Report (`wdctl.bench.report`): report.md, report.json, bleu_vs_speed.png and the
   hypotheses, all written into a temporary directory renamed to OUT at the end. When some
   measurements failed the report is still written (their rows say why) and the command then
   exits 1.

Figures: sentences/s and target tokens/s use the median pass (min/max = fastest/slowest
pass); target tokens are the hypotheses' subwords under the model's own tokenizer (no special
tokens). Latency p50/p90 is per sentence at batch size 1, over all timed passes. Speed-ups
are ratios of sentences/s on the same sentences, settings and thread count. Size on disk is
the weight files the backend loads (tokenizer files, the same for every backend, excluded).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from wdctl.bench.packages import PACKAGE_OF, System, loaded_files, make_systems, prepare_packages
from wdctl.bench.report import write_report
from wdctl.bench.settings import BACKEND_LABELS, PRECISION, BenchSettings
from wdctl.core.atomic import atomic_dir, check_output_dir
from wdctl.core.corpus import read_parallel
from wdctl.core.errors import WdctlError
from wdctl.core.metrics import bleu, chrf
from wdctl.core.runinfo import cpu_info, versions

REPORT_FORMAT = "wdctl-bench/1"


def _tokenizer_dir(model: Path, fallback: Path) -> Path:
    return model if (model / "tokenizer_config.json").is_file() else fallback


# --- measurement ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    system: System
    backend: str
    beams: int
    batch_size: int
    threads: int

    @property
    def id(self) -> str:
        return f"{self.system.name}.{self.backend}.beam{self.beams}.bs{self.batch_size}.t{self.threads}"


def plan_measurements(settings: BenchSettings, systems: list[System], backends: list[str]) -> list[Measurement]:
    """Every (system, backend) pair whose package exists (a TINY student has no CTranslate2 one)."""
    return [Measurement(s, b, beam, bs, t)
            for t in settings.threads for beam in settings.beams for bs in settings.batch_sizes
            for s in systems for b in backends if PACKAGE_OF[b] is None or PACKAGE_OF[b] in s.packages]


# Backends whose workers use transformers for the tokenizer only: told so, transformers does not
# import torch. The reports' load_seconds of ort-graph-int8: 3.5-3.6 s before (examples/results/
# bench at 71b3b71), 2.4-3.1 s after (examples/results/demo at 5d4ae8a).
TORCH_FREE_BACKENDS = frozenset({"ort-graph", "ort-graph-int8", "ort-graph-int8-sl", "ct2", "ct2-vmap"})


def worker_env(threads: int, backend: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")
    if backend in TORCH_FREE_BACKENDS:
        env["USE_TORCH"] = "0"
    return env


def run_worker(m: Measurement, settings: BenchSettings, sources: Path, work: Path, hyp_path: Path,
               log_path: Path) -> dict:
    """Run one measurement in a fresh interpreter; return its result dict (or one with 'error')."""
    model = m.system.model_for(m.backend)
    spec = {
        "backend": m.backend, "model": str(model), "tokenizer": str(_tokenizer_dir(model, m.system.model_dir)),
        "sources": str(sources), "hypotheses": str(hyp_path), "result": str(work / f"{m.id}.result.json"),
        "beams": m.beams, "batch_size": m.batch_size, "threads": m.threads, "repeats": settings.repeats,
        "max_length": settings.max_length, "length_penalty": settings.length_penalty, "device": settings.device,
    }
    spec_path = work / f"{m.id}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    result_path = Path(spec["result"])
    result_path.unlink(missing_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "wdctl.bench.worker", str(spec_path)],
                              env=worker_env(m.threads, m.backend), stdout=log, stderr=subprocess.STDOUT, check=False)
    try:
        result = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        result = {"error": f"worker exited with code {proc.returncode} and no result ({_last_line(log_path)})"}
    if proc.returncode != 0 and "error" not in result:
        result["error"] = f"worker exited with code {proc.returncode}"
    return result


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(encoding="utf-8", errors="replace").splitlines() if l.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def _percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def shown_path(path: Path, root: Path) -> str:
    """`path` relative to the report directory when inside it (it is renamed at the end), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _spread(median: float, low: float, high: float, digits: int = 2) -> dict:
    return {"median": round(median, digits), "min": round(low, digits), "max": round(high, digits)}


def summarize(m: Measurement, result: dict, settings: BenchSettings, n_sentences: int, hyp_rel: str,
              log_rel: str, references: list[str], out_root: Path) -> dict:
    row = {
        "id": m.id, "system": m.system.name, "role": m.system.role, "backend": m.backend,
        "backend_label": BACKEND_LABELS[m.backend], "precision": PRECISION[m.backend],
        "beams": m.beams, "batch_size": m.batch_size, "threads": m.threads,
        "sentences": n_sentences, "repeats": settings.repeats, "model": shown_path(m.system.model_for(m.backend), out_root),
        "status": "failed", "error": result.get("error"),
        "bleu": None, "chrf": None, "bleu_signature": None, "chrf_signature": None,
        "target_tokens": None, "seconds": None, "sentences_per_s": None, "tokens_per_s": None,
        "latency_ms": None, "peak_rss_mb": None, "load_seconds": None, "stable": None, "load_avg": None,
        "amx": None,
        "size_mb": None, "size_files": [],
        "speedup_vs_teacher_same_backend": None, "speedup_vs_teacher_torch": None,
        "hypotheses": None, "log": log_rel,
    }
    files = loaded_files(m.system, m.backend)
    row["size_files"] = [shown_path(p, out_root) for p in files]
    row["size_mb"] = round(sum(p.stat().st_size for p in files) / 1e6, 2)
    if result.get("error"):
        return row
    hyps = (out_root / hyp_rel).read_text(encoding="utf-8").split("\n")[:-1]
    if len(hyps) != len(references):
        row["error"] = f"{hyp_rel}: {len(hyps)} hypotheses for {len(references)} references"
        return row
    b, c = bleu(hyps, references), chrf(hyps, references)
    seconds = result["seconds"]
    med, lo, hi = statistics.median(seconds), min(seconds), max(seconds)
    tokens = result["target_tokens"]
    row.update({
        "status": "ok", "error": None, "bleu": b.score, "chrf": c.score,
        "bleu_signature": b.signature, "chrf_signature": c.signature, "target_tokens": tokens,
        "seconds": {**_spread(med, lo, hi, 4), "passes": [round(s, 4) for s in seconds]},
        "sentences_per_s": _spread(n_sentences / med, n_sentences / hi, n_sentences / lo),
        "tokens_per_s": _spread(tokens / med, tokens / hi, tokens / lo, 1),
        "peak_rss_mb": round(result["peak_rss_mb"], 1), "load_seconds": round(result["load_seconds"], 2),
        "load_avg": max(result["load_avg"]) if result.get("load_avg") else None,
        "stable": result["stable"], "hypotheses": hyp_rel, "amx": result.get("amx"),
    })
    lat = result.get("latencies_ms") or []
    if m.batch_size == 1 and lat:
        row["latency_ms"] = {"p50": round(_percentile(lat, 50), 2), "p90": round(_percentile(lat, 90), 2),
                             "mean": round(statistics.fmean(lat), 2), "count": len(lat)}
    return row


def add_speedups(rows: list[dict]) -> None:
    """Sentences/s relative to the teacher, same beam/batch/threads: same backend, and PyTorch fp32."""
    index = {(r["system"], r["backend"], r["beams"], r["batch_size"], r["threads"]): r
             for r in rows if r["role"] == "teacher" and r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        for key, backend in (("speedup_vs_teacher_same_backend", r["backend"]), ("speedup_vs_teacher_torch", "torch")):
            ref = index.get(("teacher", backend, r["beams"], r["batch_size"], r["threads"]))
            if ref is not None:
                r[key] = round(r["sentences_per_s"]["median"] / ref["sentences_per_s"]["median"], 2)


# --- the command ------------------------------------------------------------------------------

def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def run_bench(settings: BenchSettings, log=None) -> dict:
    """Run the whole benchmark; returns the report dict (also written to settings.out)."""
    from tqdm.auto import tqdm


    log = log or (lambda text: print(text, file=sys.stderr))
    pairs = read_parallel(settings.data, settings.split)
    if settings.max_sentences:
        pairs = pairs[: settings.max_sentences]
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    systems = make_systems(settings.teacher, settings.students)
    out = Path(settings.out)
    check_output_dir(out, settings.force)
    started = time.perf_counter()

    with atomic_dir(out, force=settings.force) as tmp:
        in_out = settings.packages is None
        cache = tmp / "packages" if in_out else Path(settings.packages)
        old_cache = out / "packages"
        moved = False
        if in_out and old_cache.is_dir():  # reuse the previous run's packages (--force)
            old_cache.rename(cache)
            moved = True
        try:
            report = _measure_all(settings, systems, cache, tmp, sources, references, log, tqdm)
        except BaseException:
            if moved and cache.is_dir() and out.is_dir() and not old_cache.exists():
                cache.rename(old_cache)  # keep the cache of the previous report
            raise
        report["settings"]["packages"] = "packages" if in_out else str(Path(settings.packages).resolve())
        report.update({"created": _utc_now(), "versions": versions(),
                       "machine": {**cpu_info(), **_memory(), **_gpu(settings.device)},
                       "wall_seconds": round(time.perf_counter() - started, 1)})
        write_report(tmp, report)
    failed = [r for r in report["rows"] if r["status"] != "ok"]
    if failed:
        first = failed[0]
        raise WdctlError(f"{len(failed)} of {len(report['rows'])} measurement(s) failed (first: {first['id']}: "
                         f"{first['error']}); the report at {out} lists them")
    return report


def _memory() -> dict:
    try:
        import psutil

        return {"memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}
    except Exception:  # noqa: BLE001
        return {}


def _gpu(device: str) -> dict:
    """The GPU's name; asked after the measurements so that this process holds no CUDA context
    (GPU memory) while the workers run."""
    if device != "cuda":
        return {}
    import torch

    return {"gpu": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {}


def _measure_all(settings: BenchSettings, systems: list[System], cache: Path, tmp: Path, sources: list[str],
                 references: list[str], log, tqdm) -> dict:
    notes = prepare_packages(systems, settings.backends, cache, log=log)
    backends = [b for b in settings.backends if PACKAGE_OF[b] is None or any(PACKAGE_OF[b] in s.packages for s in systems)]
    if settings.device == "cuda" and "ct2" in backends:
        notes.append("ct2: on cuda, int8 weights with float16 activations (compute type int8_float16)")
    hyp_dir, log_dir, work = tmp / "hypotheses", tmp / "logs", tmp / ".work"
    for d in (hyp_dir, log_dir, work):
        d.mkdir(parents=True, exist_ok=True)
    src_file = hyp_dir / "sources.txt"
    src_file.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    (hyp_dir / "references.txt").write_text("".join(r + "\n" for r in references), encoding="utf-8")

    plan = plan_measurements(settings, systems, backends)
    rows = []
    bar = tqdm(plan, desc="bench", unit="run", disable=not settings.progress, file=sys.stderr, dynamic_ncols=True)
    for m in bar:
        bar.set_postfix_str(f"{m.system.name} {m.backend} beam {m.beams} bs {m.batch_size} t{m.threads}", refresh=True)
        hyp_rel, log_rel = f"hypotheses/{m.id}.txt", f"logs/{m.id}.log"
        result = run_worker(m, settings, src_file, work, tmp / hyp_rel, tmp / log_rel)
        if (work / f"{m.id}.result.json").is_file():  # raw timings and latencies, for whoever wants them
            shutil.copyfile(work / f"{m.id}.result.json", log_dir / f"{m.id}.result.json")
        rows.append(summarize(m, result, settings, len(sources), hyp_rel, log_rel, references, tmp))
        if rows[-1]["status"] != "ok":
            bar.write(f"bench: {m.id} failed: {rows[-1]['error']}", file=sys.stderr)
    bar.close()
    shutil.rmtree(work, ignore_errors=True)
    add_speedups(rows)

    signatures = next(({"bleu": r["bleu_signature"], "chrf": r["chrf_signature"]} for r in rows if r["status"] == "ok"),
                      {"bleu": None, "chrf": None})
    settings_out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()
                    if k not in ("teacher", "students", "out", "packages", "progress", "command")}
    settings_out.update({"warmup": "one untimed pass over the first max(batch size, 8) sentences",
                         "sentences": len(sources)})
    return {
        "format": REPORT_FORMAT,
        "command": settings.command,
        "settings": settings_out,
        "data": {"spec": settings.data, "split": settings.split, "sentences": len(sources),
                 "sources": "hypotheses/sources.txt", "references": "hypotheses/references.txt"},
        "metrics": signatures,
        "systems": [{"name": s.name, "role": s.role, "model_dir": str(s.model_dir.resolve()),
                     "parameters": s.parameters,
                     "packages": {k: shown_path(v, tmp) for k, v in s.packages.items()}}
                    for s in systems],
        "backends": {b: BACKEND_LABELS[b] for b in backends},
        "notes": notes,
        "rows": rows,
    }
