"""The in-graph translator (fp32, int8) against CTranslate2 int8, one process per timing.

    .venv/bin/python benchmarks/translator_speed.py MODEL_DIR [--sentences 64] [--threads 1]
        [--repeats 3] [--batches 1,32] [--beams 1,4] [--workdir DIR]

MODEL_DIR is a MarianMT directory (config, model.safetensors, tokenizer). The script builds the
translator (`wdctl.export.translator`) fp32 and weight-only int8 and converts the model to
CTranslate2 int8 into --workdir (a temporary directory by default), tokenizes --sentences test
sentences of the bundled corpus once, then times each (backend, batch size, beams) in its own
subprocess: one warm-up pass, then --repeats timed passes, the best counts. Each pass translates
all sentences in input order in batches of the given size, with the same per-batch output limit
for every backend (2 x source width + 10 tokens, as wdctl's rule of thumb). Figures are target
tokens (EOS not counted) per second of wall-clock time, and per CPU-second of the process
(steadier on a shared machine; with 1 thread the two agree on an idle one). Prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "examples" / "data" / "bible"


def _limit(width: int, max_positions: int) -> int:
    return min(max_positions, 2 * width + 10)


def _worker(spec: dict) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sources, beams, batch, threads = spec["sources"], spec["beams"], spec["batch"], spec["threads"]
    eos, max_positions = spec["eos"], spec["max_positions"]
    batches = [sources[i:i + batch] for i in range(0, len(sources), batch)]
    if spec["backend"].startswith("onnx"):
        from wdctl.export.translator import OnnxTranslator

        tr = OnnxTranslator(spec["path"], threads=threads)

        def run():
            out = []
            for chunk in batches:
                limit = _limit(max(len(s) for s in chunk), max_positions)
                out += tr.generate(chunk, beams=beams, max_length=limit)
            return [[t for t in row if t != eos] for row in out]
    else:
        import ctranslate2

        translator = ctranslate2.Translator(spec["path"], device="cpu", compute_type="int8", inter_threads=1,
                                            intra_threads=threads)
        vocab = spec["vocab"]
        token_batches = [[[vocab[t] for t in s] for s in chunk] for chunk in batches]

        def run():
            out = []
            for chunk in token_batches:
                limit = _limit(max(len(s) for s in chunk), max_positions)
                results = translator.translate_batch(chunk, beam_size=beams, max_decoding_length=limit - 1,
                                                     max_batch_size=batch)
                out += [r.hypotheses[0] for r in results]
            return out

    run()
    best, best_cpu, outputs = float("inf"), float("inf"), None
    for _ in range(spec["repeats"]):
        start, start_cpu = time.perf_counter(), time.process_time()
        outputs = run()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - start_cpu)
    tokens = sum(len(o) for o in outputs)
    return {"seconds": best, "cpu_seconds": best_cpu, "tokens": tokens, "tok_s": tokens / best,
            "tok_cpu_s": tokens / best_cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?")
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--beams", default="1,4")
    parser.add_argument("--workdir")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(Path(args.worker).read_text())
        print(json.dumps(_worker(spec)))
        return 0
    if not args.model_dir:
        parser.error("MODEL_DIR is required")

    import torch

    torch.set_num_threads(1)
    from wdctl.core.corpus import read_parallel
    from wdctl.export.translator import export_translator
    from wdctl.passes.marian import load_marian

    work = Path(args.workdir or tempfile.mkdtemp(prefix="translator-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_marian(args.model_dir)
    fp32, int8 = work / "translator.onnx", work / "translator-int8.onnx"
    if not fp32.exists() or not int8.exists():
        export_translator(model, fp32, int8_path=int8)
    ct2 = work / "ct2-int8"
    if not ct2.exists():
        import ctranslate2

        ctranslate2.converters.TransformersConverter(args.model_dir).convert(str(ct2), quantization="int8")
    texts = [s for s, _ in read_parallel(DEFAULT_DATA, "test") if s.strip()][:args.sentences]
    sources = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
    vocab = tokenizer.convert_ids_to_tokens(list(range(model.config.vocab_size)))
    common = dict(sources=sources, threads=args.threads, repeats=args.repeats, eos=model.config.eos_token_id,
                  max_positions=model.config.max_position_embeddings)
    del model
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for beams in [int(b) for b in args.beams.split(",")]:
            row = {"batch": batch, "beams": beams}
            for backend, path in (("onnx fp32", fp32), ("onnx int8", int8), ("ct2 int8", ct2)):
                spec = dict(common, backend=backend, path=str(path), batch=batch, beams=beams,
                            vocab=vocab if backend.startswith("ct2") else None)
                spec_path = work / "spec.json"
                spec_path.write_text(json.dumps(spec))
                done = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], capture_output=True,
                                      text=True, check=False)
                if done.returncode:
                    print(done.stderr[-2000:], file=sys.stderr)
                    row[backend] = None
                else:
                    row[backend] = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_format([row], header=len(rows) == 1), flush=True)
    return 0


def _format(rows, header=True) -> str:
    names = ("onnx fp32", "onnx int8", "ct2 int8")
    lines = []
    if header:
        lines += ["| batch | beams | onnx fp32 tok/s | onnx int8 tok/s | ct2 int8 tok/s | int8/ct2 | int8/fp32 "
                  "| per CPU-s: fp32 / int8 / ct2 | int8/ct2 (CPU) | tokens fp32 / int8 / ct2 |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f = {k: (r[k]["tok_s"] if r.get(k) else float("nan")) for k in names}
        c = {k: (r[k]["tok_cpu_s"] if r.get(k) else float("nan")) for k in names}
        t = " / ".join(str(r[k]["tokens"]) if r.get(k) else "-" for k in names)
        lines.append(f"| {r['batch']} | {r['beams']} | {f['onnx fp32']:,.0f} | {f['onnx int8']:,.0f} | "
                     f"{f['ct2 int8']:,.0f} | {f['onnx int8'] / f['ct2 int8']:.2f}x | "
                     f"{f['onnx int8'] / f['onnx fp32']:.2f}x | {c['onnx fp32']:,.0f} / {c['onnx int8']:,.0f} / "
                     f"{c['ct2 int8']:,.0f} | {c['onnx int8'] / c['ct2 int8']:.2f}x | {t} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
