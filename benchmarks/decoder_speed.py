"""wdctl's decoder vs `ORTModelForSeq2SeqLM.generate` on the same ONNX files, side by side.

    .venv/bin/python benchmarks/decoder_speed.py PACKAGE_OR_MODEL_DIR [--sentences 32] [--threads 1]

PACKAGE_OR_MODEL_DIR is a package written by `wdctl export` (int8 for the issue's figure) or a
MarianMT directory, which is then exported and quantized to int8 into a temporary directory
first. Each timing runs in its own subprocess (mixing libraries in one process distorts
timings), with the same session options (intra-op threads, no spinning, 1 inter-op thread) and
torch held to one thread. Each process runs one warm-up pass, then `--repeats` timed passes;
`--rounds` processes per backend run alternately (A B, B A, ...) and the best pass counts,
which is the figure least disturbed by other jobs on a shared machine.
Prints a Markdown table of target tokens/s (tokens of the hypotheses, re-tokenized the same way
for both) per wall-clock second and per CPU-second of the process (steadier on a shared
machine), the speed-ups, and whether both paths produced identical translations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "examples" / "data" / "bible"


def _worker(spec: dict) -> dict:
    """Runs in a fresh process: load one backend, warm up, time `repeats` passes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sentences, package, threads = spec["sentences"], spec["package"], spec["threads"]
    beams, batch_size, max_length = spec["beams"], spec["batch_size"], spec["max_length"]
    if spec["backend"] == "wdctl":
        from wdctl.export.decode import OrtTranslator

        translator = OrtTranslator(package, threads=threads)
        tokenizer = translator.tokenizer

        def run():
            return translator.translate(sentences, beams=beams, batch_size=batch_size, max_length=max_length)
    else:
        import torch
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        from transformers import AutoTokenizer

        from wdctl.export.session import session_options
        from wdctl.passes.translate import translate_torch

        torch.set_num_threads(1)
        tokenizer = AutoTokenizer.from_pretrained(package)
        model = ORTModelForSeq2SeqLM.from_pretrained(package, session_options=session_options(threads),
                                                     provider="CPUExecutionProvider", local_files_only=True)
        model.eval = lambda: model  # translate_torch calls .eval(); ORT models have none

        def run():
            return translate_torch(model, tokenizer, sentences, beams=beams, batch_size=batch_size,
                                   max_length=max_length)

    hyps = run()  # warm-up
    seconds, cpu_seconds = [], []
    for _ in range(spec["repeats"]):
        started, cpu_started = time.perf_counter(), time.process_time()
        hyps = run()
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    tokens = sum(len(ids) for ids in tokenizer(text_target=hyps)["input_ids"])
    return {"seconds": min(seconds), "cpu_seconds": min(cpu_seconds), "median_seconds": statistics.median(seconds),
            "all_seconds": seconds, "tokens": tokens, "hyps": hyps, "torch_imported": "torch" in sys.modules}


def _measure(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({spec['backend']}, beams {spec['beams']}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _package(path: Path, scratch: Path) -> Path:
    from wdctl.export.package import OnnxPackage

    if OnnxPackage.is_package(path):
        return path
    from wdctl.export.onnx_export import export_onnx
    from wdctl.export.quantize import quantize_package

    print(f"exporting {path} to ONNX and int8 in {scratch} ...", file=sys.stderr)
    export_onnx(path, scratch / "fp32")
    quantize_package(scratch / "fp32", scratch / "int8", mode="int8")
    return scratch / "int8"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, nargs="?", help="package from `wdctl export`, or a MarianMT directory")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="corpus (directory, TSV or SRC,TGT); source side used")
    parser.add_argument("--split", default="test")
    parser.add_argument("--sentences", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beams", default="4,1", help="comma-separated beam sizes")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="processes per backend, run alternately")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0
    if args.model is None:
        parser.error("the model or package directory is required")

    from wdctl.core.corpus import read_parallel

    sentences = [s for s, _ in read_parallel(args.data, args.split)][: args.sentences]
    with tempfile.TemporaryDirectory() as scratch:
        package = _package(args.model, Path(scratch))
        rows = []
        for beams in [int(b) for b in args.beams.split(",")]:
            results: dict = {}
            for round_ in range(args.rounds):  # alternate the order: A B, then B A, ...
                order = ("wdctl", "optimum") if round_ % 2 == 0 else ("optimum", "wdctl")
                for backend in order:
                    spec = {"backend": backend, "package": str(package), "sentences": sentences,
                            "threads": args.threads, "beams": beams, "batch_size": args.batch_size,
                            "max_length": args.max_length, "repeats": args.repeats}
                    got = _measure(spec)
                    best = results.get(backend)
                    if best is None:
                        results[backend] = got
                    else:
                        best["seconds"] = min(best["seconds"], got["seconds"])
                        best["cpu_seconds"] = min(best["cpu_seconds"], got["cpu_seconds"])
            rows.append((beams, results))

    print(f"\npackage: {package} · {len(sentences)} sentences · batch {args.batch_size} · "
          f"{args.threads} thread(s) · best of {args.rounds} processes x {args.repeats} passes (after a warm-up) "
          "per backend, processes alternating\n")
    print("| decoding | wdctl decoder tok/s | optimum generate tok/s | speed-up | per CPU-second: wdctl | "
          "optimum | speed-up | identical outputs |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for beams, res in rows:
        rate = {k: v["tokens"] / v["seconds"] for k, v in res.items()}
        cpu = {k: v["tokens"] / max(v["cpu_seconds"], 1e-9) for k, v in res.items()}
        same = sum(a == b for a, b in zip(res["wdctl"]["hyps"], res["optimum"]["hyps"]))
        name = "greedy" if beams == 1 else f"beam {beams}"
        print(f"| {name} | {rate['wdctl']:,.0f} | {rate['optimum']:,.0f} | {rate['wdctl'] / rate['optimum']:.1f}x "
              f"| {cpu['wdctl']:,.0f} | {cpu['optimum']:,.0f} | {cpu['wdctl'] / cpu['optimum']:.1f}x "
              f"| {same}/{len(sentences)} |")
    print("\ntok/s: target tokens (hypotheses re-tokenized) per wall-clock second; per CPU-second uses the "
          "process's CPU time, which is steadier when other jobs share the cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
