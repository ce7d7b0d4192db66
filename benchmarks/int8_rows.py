"""onnxruntime's int8 product (`DynamicQuantizeMatMul`, as the translator runs it) per call,
with and without Intel AMX, by rows:

    .venv/bin/python benchmarks/int8_rows.py [--rows 1,2,4,8,16] [--calls 200] [--rounds 3]

On a CPU with AMX-INT8, onnxruntime's MLAS runs every u8 x s8 product on AMX; `wdctl.core.amx`
can refuse the process the tile state, and MLAS then runs its AVX-512 VNNI kernel. Each setting
runs in its own process (the choice is per process and final): one as onnxruntime chooses, one
after `deny_amx()`. The shapes are the bundled teacher's decoder products (d 256, FFN 1024,
vocabulary 8,000): 24 different weights per shape, called in turn, so that the weights come from
memory as in a decoder step rather than from a warm cache (the output projection: one weight).
1 thread, int8 weights written by the translator's own `quantize_translator`. Prints µs per call.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {"qkv 256x768": (256, 768, 24), "ffn out 1024x256": (1024, 256, 24), "ffn in 256x1024": (256, 1024, 24),
          "output 256x8000": (256, 8000, 1)}


def random_weights(k: int, n: int, count: int) -> list:
    """`count` random (k, n) fp32 matrices, the same on every call."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [(rng.standard_normal((k, n)) * 0.05).astype(np.float32) for _ in range(count)]


def chain_model(k: int, n: int, inits: list, nodes: list, outs: list[str]):
    """The model x (rows, k) -> y = the sum of `outs`, which `nodes` compute from x and `inits`."""
    from onnx import TensorProto, helper

    nodes = [*nodes, helper.make_node("Sum", outs, ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def one_thread_session(path: Path):
    """1 thread, no graph optimization (equal nodes stay separate calls)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def fp32_chain(k: int, n: int, weights: int, calls: int):
    """`calls` fp32 products x @ W_i, i cycling over `weights` matrices, summed."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(random_weights(k, n, weights))]
    outs = [f"y{c}" for c in range(calls)]
    nodes = [helper.make_node("MatMul", ["x", f"w{c % weights}"], [out]) for c, out in enumerate(outs)]
    return chain_model(k, n, inits, nodes, outs)


def _session(k: int, n: int, weights: int, calls: int):
    """`fp32_chain` made int8 by the translator's own `quantize_translator`."""
    from wdctl.export.translator import quantize_translator

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.onnx"
        assert quantize_translator(fp32_chain(k, n, weights, calls), path) == calls
        return one_thread_session(path)


def measure(rows: list[int], calls: int, rounds: int) -> dict:
    import numpy as np

    out = {}
    for name, (k, n, weights) in SHAPES.items():
        session = _session(k, n, weights, 24)
        for m in rows:
            x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
            for _ in range(10):
                session.run(None, {"x": x})
            runs = max(1, calls // 24)
            best = float("inf")
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(runs):
                    session.run(None, {"x": x})
                best = min(best, (time.perf_counter() - start) / runs / 24 * 1e6)
            out[f"{name}|{m}"] = best
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--calls", type=int, default=2400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=["default", "deny"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = [int(r) for r in args.rows.split(",")]
    if args.child:
        from wdctl.core import amx

        if args.child == "deny" and not amx.deny_amx():
            print(json.dumps({"error": "AMX could not be refused here"}))
            return 0
        result = measure(rows, args.calls, args.rounds)
        print(json.dumps({"amx": amx.state(), "us": result}))
        return 0

    from wdctl.core import amx

    if not amx.cpu_has_amx():
        print("this CPU has no AMX-INT8 (or this is not Linux x86-64): nothing to compare")
        return 0
    runs = {}
    for child in ("default", "deny"):
        proc = subprocess.run([sys.executable, __file__, "--child", child, "--rows", args.rows, "--calls",
                               str(args.calls), "--rounds", str(args.rounds)], capture_output=True, text=True, check=True)
        runs[child] = json.loads(proc.stdout.strip().splitlines()[-1])
        if "error" in runs[child]:
            print(runs[child]["error"])
            return 1
    print(f"µs per call, 1 thread, best of {args.rounds}; AMX: {runs['default']['amx']} / {runs['deny']['amx']}\n")
    print("| product | rows | AMX | AVX-512 VNNI | AMX / VNNI |")
    print("|---|---:|---:|---:|---:|")
    for key, amx_us in runs["default"]["us"].items():
        name, m = key.split("|")
        vnni_us = runs["deny"]["us"][key]
        print(f"| {name} | {m} | {amx_us:.1f} | {vnni_us:.1f} | {amx_us / vnni_us:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
