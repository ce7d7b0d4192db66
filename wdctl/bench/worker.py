"""One benchmark measurement in a fresh process: `python -m wdctl.bench.worker SPEC.json`.

`wdctl bench` starts one worker per (system, backend, beam, batch size): thread pools of
different libraries in one process (torch, onnxruntime, CTranslate2) distort each other's
timings badly on a 2-core machine, and a fresh process also gives an honest peak RSS.

The spec is a JSON object:
  backend       torch | ort-optimum | ort-graph | ort-graph-int8 | ort-graph-int8-sl | ct2 | ct2-vmap
                (-sl: a package whose translator has a shortlist; ct2-vmap: translate_batch(use_vmap=True))
  model         the directory this backend loads (MarianMT dir, ONNX package or CT2 model)
  tokenizer     a directory holding the model's tokenizer
  sources       a UTF-8 file, one source sentence per line
  hypotheses    where to write the hypotheses of the last timed pass (one per line)
  result        where to write the result JSON
  beams, batch_size, threads, repeats, max_length, length_penalty
  device        cpu | cuda (default cpu): where the backend runs

The worker loads the backend, runs one warm-up pass over the first batch (at least 8
sentences), then `repeats` timed passes over all sentences. At batch size 1 every sentence
is its own call and its latency is recorded. Timings cover translation only (tokenize,
decode, detokenize), never loading or the token counting done afterwards. On cuda, the
torch-based backends (torch, ort-optimum) call `torch.cuda.synchronize()` before a timer stops,
so queued GPU work is counted; CTranslate2 returns host results, which already waits.

The result JSON holds: seconds (per timed pass), latencies_ms (batch size 1 only; all
sentences of all passes), target_tokens (of the hypotheses, counted with the model's target
tokenizer, special tokens excluded), peak_rss_mb (this process's high-water mark), load_seconds,
stable (all timed passes produced the same hypotheses), threads, load_avg (the 1-minute load
average before and after the timed passes), amx (`wdctl.core.amx.state()`: "refused" where the
in-graph translator's few-row searches kept it off, "in use" where a library took it). On
failure it holds `error` and the process exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from wdctl.core import amx
from wdctl.core.runinfo import peak_rss_mb
from wdctl.export.session import hold_torch_threads
from wdctl.passes.batching import length_sorted_batches, output_limit

WARMUP_SENTENCES = 8

Translate = Callable[[list[str], int], list[str]]


def _limit_torch_threads(n: int) -> None:
    """Hold torch, which this backend uses, to `n` threads (and one inter-op thread)."""
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (harmless)
        pass


def _synchronized(translate: Translate, device: str) -> Translate:
    """`translate`, waiting for the GPU to finish before returning (CUDA calls are asynchronous)."""
    if device != "cuda":
        return translate
    import torch

    def run(sentences: list[str], batch_size: int) -> list[str]:
        out = translate(sentences, batch_size)
        torch.cuda.synchronize()
        return out

    return run


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def _torch_backend(spec: dict, tokenizer) -> Translate:
    _limit_torch_threads(spec["threads"])
    from wdctl.passes.marian import load_marian
    from wdctl.passes.translate import translate_torch

    model, _ = load_marian(spec["model"], with_tokenizer=False)
    model.to(spec["device"])  # translate_torch puts the inputs on the model's device

    def run(sentences: list[str], batch_size: int) -> list[str]:
        return translate_torch(model, tokenizer, sentences, beams=spec["beams"], batch_size=batch_size,
                               max_length=spec["max_length"], length_penalty=spec["length_penalty"])

    return _synchronized(run, spec["device"])


def _graph_backend(spec: dict, tokenizer) -> Translate:
    """The package's in-graph translator (translator.onnx): one `session.run` per batch."""
    hold_torch_threads(1)  # only if imported: `wdctl bench` starts this worker with USE_TORCH=0
    from wdctl.export.translator import PackageTranslator, settle_kernels_for_search

    # as `wdctl translate` does: few rows a search keep the int8 products off AMX (the result's "amx")
    settle_kernels_for_search(spec["beams"], spec["batch_size"])
    translator = PackageTranslator(spec["model"], threads=spec["threads"], tokenizer=tokenizer)

    def run(sentences: list[str], batch_size: int) -> list[str]:
        return translator.translate(sentences, beams=spec["beams"], batch_size=batch_size,
                                    max_length=spec["max_length"], length_penalty=spec["length_penalty"])

    return run


def _ort_optimum_backend(spec: dict, tokenizer) -> Translate:
    _limit_torch_threads(1)
    from wdctl.export.optimum_model import load_optimum
    from wdctl.passes.translate import translate_torch

    model = load_optimum(spec["model"], threads=spec["threads"], device=spec["device"])

    def run(sentences: list[str], batch_size: int) -> list[str]:
        return translate_torch(model, tokenizer, sentences, beams=spec["beams"], batch_size=batch_size,
                               max_length=spec["max_length"], length_penalty=spec["length_penalty"])

    return _synchronized(run, spec["device"])


def _ct2_backend(spec: dict, tokenizer) -> Translate:
    import ctranslate2

    hold_torch_threads(1)  # only if imported (USE_TORCH=0 here); idle, but kept off the second core

    # int8 weights either way; on the GPU the layers that are not int8 run in float16, the usual
    # CTranslate2 setting there
    compute_type = "int8_float16" if spec["device"] == "cuda" else "int8"
    translator = ctranslate2.Translator(spec["model"], device=spec["device"], compute_type=compute_type,
                                        intra_threads=spec["threads"], inter_threads=1)
    beams, max_length = spec["beams"], spec["max_length"]
    truncate = min(max_length, tokenizer.model_max_length)
    use_vmap = spec["backend"] == "ct2-vmap"

    def run(sentences: list[str], batch_size: int) -> list[str]:
        out = [""] * len(sentences)
        for idx in length_sorted_batches(sentences, batch_size):
            ids = tokenizer([sentences[i] for i in idx], truncation=True, max_length=truncate)["input_ids"]
            tokens = [tokenizer.convert_ids_to_tokens(x) for x in ids]
            # transformers' max_length counts the decoder start token and Marian forces `</s>` at
            # the last position, so it emits at most limit - 2 real tokens; CTranslate2 counts
            # neither the start token nor a forced end. CTranslate2 takes one limit per call, so
            # here (unlike the other backends) it is the longest source's of the batch: a call per
            # distinct limit would give each sentence its own, at the cost of many small calls.
            limit = output_limit(max(len(x) for x in ids), max_length) - 2
            results = translator.translate_batch(
                tokens, beam_size=beams, max_batch_size=0, max_decoding_length=limit,
                length_penalty=spec["length_penalty"], return_scores=False, use_vmap=use_vmap)
            for i, result in zip(idx, results):
                out[i] = tokenizer.decode(tokenizer.convert_tokens_to_ids(result.hypotheses[0]),
                                          skip_special_tokens=True)
        return out

    return run


LOADERS = {"torch": _torch_backend, "ort-optimum": _ort_optimum_backend, "ort-graph": _graph_backend,
           "ort-graph-int8": _graph_backend, "ort-graph-int8-sl": _graph_backend, "ct2": _ct2_backend,
           "ct2-vmap": _ct2_backend}


def _one_line(texts: list[str]) -> list[str]:
    return [" ".join(t.splitlines()) if t else "" for t in texts]


def _count_target_tokens(tokenizer, texts: list[str]) -> int:
    if not texts:
        return 0
    encoded = tokenizer(text_target=texts, add_special_tokens=False)["input_ids"]
    return sum(len(x) for x in encoded)


def measure(spec: dict) -> dict:
    """Load, warm up, time; write the hypotheses file; return the result dict."""
    start = time.perf_counter()
    sources = Path(spec["sources"]).read_text(encoding="utf-8").split("\n")[:-1]
    tokenizer = _load_tokenizer(spec["tokenizer"])
    translate = LOADERS[spec["backend"]](spec, tokenizer)
    load_seconds = time.perf_counter() - start
    batch_size = spec["batch_size"]

    warm = sources[: max(batch_size, WARMUP_SENTENCES)]
    t0 = time.perf_counter()
    if batch_size == 1:
        for sentence in warm:
            translate([sentence], 1)
    else:
        translate(warm, batch_size)
    warmup_seconds = time.perf_counter() - t0

    seconds, latencies, passes = [], [], []
    load_before = os.getloadavg()[0]
    for _ in range(spec["repeats"]):
        if batch_size == 1:
            hyps = []
            t_pass = time.perf_counter()
            for sentence in sources:
                t0 = time.perf_counter()
                hyps.extend(translate([sentence], 1))
                latencies.append((time.perf_counter() - t0) * 1000.0)
            seconds.append(time.perf_counter() - t_pass)
        else:
            t0 = time.perf_counter()
            hyps = translate(sources, batch_size)
            seconds.append(time.perf_counter() - t0)
        passes.append(_one_line(hyps))

    hyps = passes[-1]
    if len(hyps) != len(sources):
        raise RuntimeError(f"backend returned {len(hyps)} hypotheses for {len(sources)} sentences")
    Path(spec["hypotheses"]).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return {
        "backend": spec["backend"],
        "seconds": seconds,
        "latencies_ms": latencies,
        "warmup_seconds": warmup_seconds,
        "load_seconds": load_seconds,
        "target_tokens": _count_target_tokens(tokenizer, hyps),
        "stable": all(p == hyps for p in passes),
        "threads": spec["threads"],
        "peak_rss_mb": peak_rss_mb(),
        # 1-minute load average before/after the timed passes (this worker counts 1): other
        # work on the machine shows up here and makes the timings unreliable
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "amx": amx.state(),  # whether this process's int8 products could use Intel AMX
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m wdctl.bench.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    spec.setdefault("device", "cpu")  # optional in a spec (see above)
    try:
        if spec["backend"] not in LOADERS:
            raise ValueError(f"unknown backend {spec['backend']!r}")
        result = measure(spec)
        code = 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
        traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        result = {"backend": spec.get("backend"), "error": f"{type(exc).__name__}: {message}"[:500]}
        code = 1
    Path(spec["result"]).write_text(json.dumps(result) + "\n", encoding="utf-8")
    return code


if __name__ == "__main__":
    sys.exit(main())
