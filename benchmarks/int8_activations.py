"""How the int8 translator should quantize a product's input, per call, by rows:

    .venv/bin/python benchmarks/int8_activations.py [--rows 1,4,16,128] [--calls 48]

Variants, each on the bundled teacher's decoder shapes (d 256, FFN 1024; 24 different weights per
shape called in turn, so weights come from memory as in a decoder step), 1 thread:

- fp32            MatMul
- dynamic         DynamicQuantizeMatMul: one activation scale per call, from the whole input
- calibrated      QuantizeLinear (a fixed scale) + MatMulIntegerToFloat (what the translator runs)
- nbits-b32/b128  MatMulNBits, 8-bit weights, accuracy level 4: the input quantized per block of
                  32 / 128 values of a row (per-row scales, the CTranslate2 way)

Prints µs per call, and `*` where row 0 of a call differs from row 0 computed alone (a row's result
depends on the other rows of its call: a sentence's translation on its batch).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPES = {"qkv 256x768": (256, 768), "ffn in 256x1024": (256, 1024), "ffn out 1024x256": (1024, 256)}
WEIGHTS = 24
VARIANTS = ("fp32", "dynamic", "calibrated", "nbits-b32", "nbits-b128")


def _model(k: int, n: int, calls: int, variant: str, path: Path):
    """`calls` products x @ W_i (i cycling over WEIGHTS matrices, `int8_rows`'s) summed, as `variant`."""
    import onnx
    from onnx import helper, numpy_helper

    from int8_rows import chain_model, fp32_chain, random_weights
    from wdctl.export.translator import quantize_translator

    if variant in ("fp32", "dynamic"):
        model = fp32_chain(k, n, WEIGHTS, calls)
        if variant == "dynamic":
            quantize_translator(model, path, reduce_range=True)
        else:
            onnx.save(model, str(path))
        return
    ws = random_weights(k, n, WEIGHTS)
    outs = [f"y{c}" for c in range(calls)]
    inits, nodes = [], []
    if variant == "calibrated":
        for i, w in enumerate(ws):
            amax = np.abs(w).max(0)
            scale = np.where(amax > 0, amax / 63, 1).astype(np.float32)  # 7-bit weights, as on AVX2
            inits += [numpy_helper.from_array(np.clip(np.rint(w / scale), -63, 63).astype(np.int8), f"b{i}"),
                      numpy_helper.from_array(scale, f"s{i}")]
        inits += [numpy_helper.from_array(np.array(8.0 / 255, np.float32), "a_scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "a_zp")]
        for c, o in enumerate(outs):  # one QuantizeLinear per product, as in the translator
            nodes += [helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zp"], [f"q{c}"]),
                      helper.make_node("MatMulIntegerToFloat", [f"q{c}", f"b{c % WEIGHTS}", "a_scale",
                                                                f"s{c % WEIGHTS}", "a_zp"], [o], domain="com.microsoft")]
    else:
        block = int(variant.split("-b")[1])
        for i, w in enumerate(ws):
            blocks = w.T.reshape(n, k // block, block)
            amax = np.abs(blocks).max(-1)
            scale = np.where(amax > 0, amax / 127, 1).astype(np.float32)
            q = (np.clip(np.rint(blocks / scale[..., None]), -127, 127) + 128).astype(np.uint8)
            inits += [numpy_helper.from_array(q, f"b{i}"), numpy_helper.from_array(scale.reshape(-1), f"s{i}")]
        nodes = [helper.make_node("MatMulNBits", ["x", f"b{c % WEIGHTS}", f"s{c % WEIGHTS}"], [o], domain="com.microsoft",
                                  K=k, N=n, bits=8, block_size=block, accuracy_level=4) for c, o in enumerate(outs)]
    onnx.save(chain_model(k, n, inits, nodes, outs), str(path))


def main(argv=None) -> None:
    from int8_rows import one_thread_session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16,128")
    parser.add_argument("--calls", type=int, default=48)
    args = parser.parse_args(argv)
    rows_list = [int(r) for r in args.rows.split(",")]
    print(f"µs per call, 1 thread, rows {rows_list}; * = row 0 differs from row 0 computed alone")
    with tempfile.TemporaryDirectory() as tmp:
        for shape, (k, n) in SHAPES.items():
            for variant in VARIANTS:
                path = Path(tmp) / f"{variant}.onnx"
                _model(k, n, args.calls, variant, path)
                session = one_thread_session(path)
                cells = []
                for rows in rows_list:
                    x = np.random.default_rng(1).standard_normal((rows, k)).astype(np.float32)
                    y = session.run(None, {"x": x})[0]
                    reps = max(3, 200 // rows)
                    started = time.perf_counter()
                    for _ in range(reps):
                        session.run(None, {"x": x})
                    per_call = (time.perf_counter() - started) / reps / args.calls * 1e6
                    alone = session.run(None, {"x": x[:1]})[0]
                    cells.append(f"{per_call:8.1f}{' ' if np.array_equal(alone[0], y[0]) else '*'}")
                print(f"{shape:18s} {variant:12s}" + "".join(cells), flush=True)


if __name__ == "__main__":
    main()
