"""One decoding step of the decoder's self-attention in onnxruntime, three ways, per call:

    .venv/bin/python benchmarks/self_attention_step.py [--rows 128] [--past 30] [--heads 4]
        [--head-size 64] [--calls 200] [--rounds 3]

- `MultiHeadAttention` with past/present, as the translator's decoder step runs it (a `Split`
  of the packed QKV projection first: the CPU kernel refuses packed QKV);
- `GroupQueryAttention` with packed QKV and as many K/V heads as query heads (the newer CPU
  kernel, the only other contrib op that takes a past and returns a present);
- the floor: copying the past keys and values into a present one position longer (numpy),
  which any op that returns a fresh present must do every step.

Rows = sentences x beams (batch 32 at beam 4 is 128 rows). Both ops are checked to agree
before anything is timed; the rounds interleave the three, and every figure is printed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from wdctl.export.session import session_options  # the translator's settings: 1 thread, no spinning


def _session(nodes, inputs, initializers=()):
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("out", "present_k", "present_v")]
    graph = helper.make_graph(nodes, "step", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])


def build(rows: int, heads: int, head_size: int):
    hidden = heads * head_size
    inputs = [helper.make_tensor_value_info("qkv", TensorProto.FLOAT, [rows, 1, 3 * hidden]),
              helper.make_tensor_value_info("past_k", TensorProto.FLOAT, [rows, heads, "past", head_size]),
              helper.make_tensor_value_info("past_v", TensorProto.FLOAT, [rows, heads, "past", head_size])]
    mha = _session([
        helper.make_node("Split", ["qkv"], ["q", "k", "v"], axis=2, num_outputs=3),
        helper.make_node("MultiHeadAttention", ["q", "k", "v", "", "", "", "past_k", "past_v"],
                         ["out", "present_k", "present_v"], domain="com.microsoft", num_heads=heads),
    ], inputs)
    # GQA reads the valid length of every row (seqlens_k = total - 1 = the past's length) and
    # the total length from inputs; both come from the past's shape here.
    gqa = _session([
        helper.make_node("Shape", ["past_k"], ["past_len64"], start=2, end=3),
        helper.make_node("Cast", ["past_len64"], ["past_len"], to=TensorProto.INT32),
        helper.make_node("Expand", ["past_len", "rows"], ["seqlens_k"]),
        helper.make_node("Add", ["past_len", "one"], ["total1"]),
        helper.make_node("Squeeze", ["total1"], ["total"]),
        helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_k", "past_v", "seqlens_k", "total"],
                         ["out", "present_k", "present_v"], domain="com.microsoft", num_heads=heads, kv_num_heads=heads),
    ], inputs, [helper.make_tensor("rows", TensorProto.INT64, [1], [rows]),
                helper.make_tensor("one", TensorProto.INT32, [1], [1])])
    return mha, gqa


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--past", type=int, default=30)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    hidden = args.heads * args.head_size
    past = (args.rows, args.heads, args.past, args.head_size)
    feed = {"qkv": rng.standard_normal((args.rows, 1, 3 * hidden), dtype=np.float32),
            "past_k": rng.standard_normal(past, dtype=np.float32),
            "past_v": rng.standard_normal(past, dtype=np.float32)}
    mha, gqa = build(args.rows, args.heads, args.head_size)
    a, b = mha.run(None, feed), gqa.run(None, feed)
    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    if diff > 1e-4:
        raise SystemExit(f"MultiHeadAttention and GroupQueryAttention disagree (max |diff| {diff:.2e})")

    present = (args.rows, args.heads, args.past + 1, args.head_size)
    dest_k, dest_v = np.empty(present, np.float32), np.empty(present, np.float32)

    def copy_past():
        dest_k[:, :, : args.past] = feed["past_k"]
        dest_v[:, :, : args.past] = feed["past_v"]

    cases = {"MultiHeadAttention": lambda: mha.run(None, feed),
             "GroupQueryAttention": lambda: gqa.run(None, feed),
             "copy past -> present": copy_past}
    print(f"rows {args.rows}, past {args.past}, heads {args.heads} x {args.head_size}, "
          f"past K+V {2 * np.prod(past) * 4 / 2**20:.1f} MiB; ops agree to {diff:.1e}; us per call:")
    for round_ in range(args.rounds):
        figures = []
        for name, call in cases.items():
            call()
            start = time.perf_counter()
            for _ in range(args.calls):
                call()
            figures.append(f"{name} {(time.perf_counter() - start) / args.calls * 1e6:,.0f}")
        print(f"  round {round_ + 1}: " + ", ".join(figures))


if __name__ == "__main__":
    main()
