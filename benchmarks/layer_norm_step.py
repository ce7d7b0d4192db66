"""The decoder's residual + layer norm in onnxruntime, two ways, per call:

    .venv/bin/python benchmarks/layer_norm_step.py [--rows 1,4,16,128] [--hidden 256]
        [--chain 18] [--calls 200] [--rounds 3]

- `SkipLayerNormalization` (com.microsoft), which onnxruntime also makes of an Add followed by
  `LayerNormalization` where it knows the shapes (its SkipLayerNormFusion);
- `Sum` + `LayerNormalization`, which it leaves as they are: what the translator's graph uses.

Each session holds --chain of them in a row (18: a 6-layer decoder step's three per layer) on
(rows, 1, hidden) inputs, with the translator's session settings (1 thread, no spinning, every
graph optimization). The two are checked to agree and the optimized graphs to hold the expected
ops before anything is timed; the rounds interleave the two, and every figure is printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from wdctl.export.session import session_options  # the translator's settings: 1 thread, no spinning


def build(kind: str, hidden: int, chain: int) -> bytes:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.random(hidden) + 0.5).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.random(hidden).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.random(hidden).astype(np.float32), "bias")]
    nodes, x = [], "x"
    for i in range(chain):
        if kind == "SkipLayerNormalization":
            nodes.append(helper.make_node("SkipLayerNormalization", [x, "residual", "gamma", "beta", "bias"], [f"y{i}"],
                                          domain="com.microsoft", epsilon=1e-5))
        else:
            nodes.append(helper.make_node("Sum", [x, "bias", "residual"], [f"s{i}"]))
            nodes.append(helper.make_node("LayerNormalization", [f"s{i}", "gamma", "beta"], [f"y{i}"], axis=-1,
                                          epsilon=1e-5))
        x = f"y{i}"
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["rows", 1, hidden]) for n in ("x", "residual")]
    graph = helper.make_graph(nodes, "residual_ln", info,
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["rows", 1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def session(kind: str, hidden: int, chain: int, workdir: str):
    """The session, after checking that onnxruntime's optimizer left the intended op."""
    import onnx

    opts = session_options(1)
    opts.optimized_model_filepath = f"{workdir}/{kind.split()[0]}.onnx"
    sess = ort.InferenceSession(build(kind, hidden, chain), opts, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
    expected = {"SkipLayerNormalization"} if kind == "SkipLayerNormalization" else {"Sum", "LayerNormalization"}
    if ops != expected:
        raise SystemExit(f"{kind}: onnxruntime's optimized graph holds {sorted(ops)}")
    return sess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16,128")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--chain", type=int, default=18)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    kinds = ("SkipLayerNormalization", "Sum + LayerNormalization")
    with tempfile.TemporaryDirectory() as workdir:
        sessions = {k: session(k, args.hidden, args.chain, workdir) for k in kinds}
    rng = np.random.default_rng(0)
    for rows in (int(r) for r in args.rows.split(",")):
        feed = {n: rng.standard_normal((rows, 1, args.hidden), dtype=np.float32) for n in ("x", "residual")}
        a, b = (sessions[k].run(None, feed)[0] for k in kinds)
        diff = float(np.abs(a - b).max())
        if diff > 1e-4:
            raise SystemExit(f"the two disagree by {diff}")
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(args.rounds):
            for k in kinds:
                for _ in range(10):
                    sessions[k].run(None, feed)
                start = time.perf_counter()
                for _ in range(args.calls):
                    sessions[k].run(None, feed)
                times[k].append((time.perf_counter() - start) / args.calls / args.chain * 1e6)
        for k in kinds:
            print(f"rows {rows:4d}  {k:26s} " + "  ".join(f"{t:7.2f}" for t in times[k]) + "  µs a call")
        print(f"           outputs agree within {diff:.1e}")


if __name__ == "__main__":
    main()
