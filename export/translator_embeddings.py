"""The int8 translator's embeddings: one int8 table per distinct embedding, in the main graph.

The fp32 translator holds a Marian model's tied embedding three times: the encoder's lookup
(pre-multiplied by sqrt(d) when the model scales its embeddings), the decoder's lookup (the
same) and the decoder's output projection (its transpose), each an initializer of the (sub)graph
that reads it. `share_embeddings` (called by `quantize_translator`) replaces them by

- `embed{k}/int8` (d, vocab) int8, one per distinct table, in the main graph, per-token scales
  `embed{k}/scale` (symmetric, zero point 0: the weight `quantize_translator` gives every other
  MatMul); the output projection becomes a `DynamicQuantizeMatMul` that reads it from the outer
  scope;
- each lookup becomes Gather(`embed{k}/rows`, ids) -> Cast -> Mul(Gather(`embed{k}/scale{j}`,
  ids)): `embed{k}/rows` is a `Transpose` of the int8 table in the main graph, which
  onnxruntime's constant folding turns into a (vocab, d) initializer when the session loads
  (the file holds the table once; the session holds it transposed too, for contiguous rows),
  and the scale tables fold in sqrt(d).

A table no output projection reads (an encoder embedding that is not tied to the decoder's, as
in a student whose decoder is narrower) is stored (vocab, d) int8 with per-row scales, no
Transpose. Measured on onnxruntime 1.32's CPU provider (AVX2 machine,
`benchmarks/package_size.py` records the sizes):

- outer-scope initializers are pre-packed for `DynamicQuantizeMatMul` and `MatMulNBits` (a
  58,101 x 512 product in an If branch reading the main graph's weight ran as fast as with its
  own initializer; the same weight fed as a graph input, i.e. never pre-packed, took 1.5-2.5x);
- `MatMulNBits` (bits=8, accuracy_level 4, block = d, shape (vocab, 1, d)) would share its
  weight with `GatherBlockQuantized` (uint8, quantize_axis = last) without a transpose, but it
  took 1.2-2x `DynamicQuantizeMatMul`'s time at 4-16 rows on AVX2, and the output projection
  is the largest product of a decoder step;
- a Gather along axis 1 of the (d, vocab) table (no transpose) took 0.28 ms for 16 rows and
  38 ms for a 32 x 60 source batch at d 512 (one copy per element); rows of the folded
  transpose take 0.04 ms and 2 ms.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

_F32 = np.float32


def _quantize_rows(table: np.ndarray, limit: float = 127.0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per row within ±limit: (int8 table, float32 scale per row)."""
    amax = np.abs(table).max(axis=1)
    scale = np.where(amax > 0, amax / limit, 1.0).astype(_F32)
    q = np.clip(np.rint(table / scale[:, None]), -limit, limit).astype(np.int8)
    return q, scale


def _digest(array: np.ndarray) -> tuple:
    return array.shape, hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _initializer(scope: dict, name: str):
    return next(t for t in scope[name].initializer if t.name == name)


def share_embeddings(model, walked, limit: float = 127.0) -> dict:
    """Rewrite every float embedding lookup (a `Gather` on a 2-D float initializer, axis 0) and
    every output projection tied to one (a `MatMul` whose weight transposed equals a lookup
    table up to 1 or sqrt(d)) of `model` to read one int8 table per distinct embedding, held by
    the main graph (see the module doc). `walked` is `translator_graph._subgraphs(model.graph)` as a list, whose
    graphs are edited in place. Returns {(id(owner graph), weight name): (int8, scale, zero
    point) names} for the tied MatMuls, for `quantize_translator` to turn into
    `DynamicQuantizeMatMul`s on the shared table; the float tables are left for it to drop once
    nothing reads them."""
    from onnx import TensorProto, helper, numpy_helper

    top = model.graph
    lookups = []  # (graph, node, table)
    products: dict[tuple, list] = {}  # (d, vocab) -> [(owner, weight name, weight)]
    for graph, scope in walked:
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Gather" and node.input[0] in scope:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                tensor = _initializer(scope, node.input[0])
                if axis == 0 and len(tensor.dims) == 2 and tensor.data_type == TensorProto.FLOAT:
                    lookups.append((graph, node, numpy_helper.to_array(tensor)))
            elif node.op_type == "MatMul" and node.input[1] in scope:
                tensor = _initializer(scope, node.input[1])
                if len(tensor.dims) == 2 and tensor.data_type == TensorProto.FLOAT:
                    products.setdefault(tuple(tensor.dims), []).append((scope[node.input[1]], tensor.name, None))
    if not lookups:
        return {}

    groups: dict[tuple, dict] = {}  # digest of the base table (vocab, d) -> its names

    def group_for(base: np.ndarray, transposed: bool) -> dict:
        key = _digest(base)
        if key not in groups:
            prefix = f"embed{len(groups)}/"
            q, scale = _quantize_rows(base, limit)
            names = {"int8": prefix + "int8", "scale": prefix + "scale", "zp": prefix + "zp",
                     "rows": prefix + "rows", "lookup_scales": {}, "prefix": prefix}
            if transposed:  # (d, vocab) for DynamicQuantizeMatMul; the lookups read its folded transpose
                top.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(q.T), names["int8"]),
                                        numpy_helper.from_array(scale, names["scale"]),
                                        numpy_helper.from_array(np.zeros(len(scale), np.int8), names["zp"])])
                top.node.insert(0, helper.make_node("Transpose", [names["int8"]], [names["rows"]],
                                                    name=prefix + "Transpose", perm=[1, 0]))
            else:
                top.initializer.append(numpy_helper.from_array(q, names["rows"]))
            names["row_scale"] = scale
            groups[key] = names
        return groups[key]

    tied: dict[tuple[int, str], tuple[str, str, str]] = {}
    weights: dict[tuple[int, str], np.ndarray] = {}
    for graph, node, table in lookups:
        vocab, d = table.shape
        base, factor = table, 1.0
        for owner, name, _ in products.get((d, vocab), []):
            if (id(owner), name) not in weights:
                weights[(id(owner), name)] = numpy_helper.to_array(_initializer({name: owner}, name))
            w = weights[(id(owner), name)]
            for c in (1.0, math.sqrt(d)):
                if np.array_equal(w.T * _F32(c), table):
                    base, factor = np.ascontiguousarray(w.T), c
                    break
            if base is not table:
                break
        names = group_for(base, transposed=base is not table)
        if base is not table:
            digest = _digest(base)
            for owner, name, _ in products[(d, vocab)]:  # every product on this table
                w = weights.get((id(owner), name))
                if w is None:
                    w = weights[(id(owner), name)] = numpy_helper.to_array(_initializer({name: owner}, name))
                if _digest(np.ascontiguousarray(w.T)) == digest:
                    tied[(id(owner), name)] = (names["int8"], names["scale"], names["zp"])
        key = float(factor)
        if key not in names["lookup_scales"]:
            scale_name = f"{names['prefix']}scale{len(names['lookup_scales'])}"
            top.initializer.append(numpy_helper.from_array(
                (names["row_scale"] * _F32(factor)).astype(_F32)[:, None], scale_name))
            names["lookup_scales"][key] = scale_name
        _rewrite_lookup(graph, node, names["rows"], names["lookup_scales"][key])
    return tied


def _rewrite_lookup(graph, node, rows: str, scales: str) -> None:
    """Gather(float table, ids) -> Gather(int8 rows, ids) -> Cast -> Mul(Gather(scales, ids)),
    the last node taking the place (and output) of the old one."""
    from onnx import TensorProto, helper

    ids, out = node.input[1], node.output[0]
    index = list(graph.node).index(node)
    new = [helper.make_node("Gather", [rows, ids], [out + ".int8"], name=node.name + ".int8"),
           helper.make_node("Cast", [out + ".int8"], [out + ".float"], name=node.name + ".cast", to=TensorProto.FLOAT),
           helper.make_node("Gather", [scales, ids], [out + ".scale"], name=node.name + ".scale")]
    for i, extra in enumerate(new):
        graph.node.insert(index + i, extra)
    node.op_type = "Mul"
    del node.attribute[:]
    del node.input[:]
    node.input.extend([out + ".float", out + ".scale"])


def share_shortlist_rows(walked) -> list[str]:
    """With a shortlist (`translator_graph._shortlist_nodes`), the decoder's output projection
    multiplies rows gathered per batch: after `share_embeddings` those come from the int8 table
    as Gather -> Cast -> Mul(scales) [-> Mul(1 / sqrt(d))] -> Transpose (`*shortlist_w`), an fp32
    (d, k) weight that the product would read (and pack) at four bytes a weight every step.
    Here the weight stays int8: `*shortlist_w` = Transpose(the gathered int8 rows), its per-column
    scales `*shortlist_w_scale` (k,), and the decoder's MatMul on it becomes a
    `DynamicQuantizeMatMul`, as the full output projection is. Returns the outputs of the
    products it rewrote."""
    from onnx import helper, numpy_helper

    producers = {o: (graph, node) for graph, _ in walked for node in graph.node for o in node.output}
    rewritten = []
    for graph, scope in walked:
        for node in list(graph.node):
            if node.op_type != "Transpose" or not node.output[0].endswith("shortlist_w"):
                continue
            name = node.output[0]
            unscale = None
            _, mul = producers[node.input[0]]
            if mul.input[1] in scope:  # Mul(rows, 1 / sqrt(d)) after the lookup's own Mul
                unscale = mul.input[1]
                _, mul = producers[mul.input[0]]
            float_rows, scales = mul.input  # the lookup: Mul(Cast(int8 rows), gathered scales (k, 1))
            _, cast = producers[float_rows]
            if mul.op_type != "Mul" or cast.op_type != "Cast":
                raise ValueError(f"{name}: not the shortlist's int8 rows")
            int8_rows = cast.input[0]
            scale = helper.make_node("Mul", [scales, unscale], [name + "_scale2d"], name=name + ".scale") if unscale \
                else helper.make_node("Identity", [scales], [name + "_scale2d"], name=name + ".scale")
            flat = numpy_helper.from_array(np.array([-1], np.int64), name + ".flat")
            graph.initializer.append(flat)
            index = list(graph.node).index(node)
            graph.node.insert(index, scale)
            graph.node.insert(index + 1, helper.make_node("Reshape", [name + "_scale2d", flat.name], [name + "_scale"],
                                                          name=name + ".reshape"))
            del node.input[:]
            node.input.append(int8_rows)
            for sub, _ in walked:
                for user in sub.node:
                    if user.op_type == "MatMul" and list(user.input)[1:] == [name]:
                        user.op_type, user.domain = "DynamicQuantizeMatMul", "com.microsoft"
                        user.input.append(name + "_scale")
                        rewritten.append(user.output[0])
    _drop_unused(walked)
    return rewritten


def _drop_unused(walked) -> None:
    """Remove nodes whose outputs nothing reads (the float copies the rewrite left behind)."""
    while True:
        read = {i for graph, _ in walked for node in graph.node for i in node.input}
        read |= {o.name for graph, _ in walked for o in graph.output}
        dead = [(graph, node) for graph, _ in walked for node in graph.node
                if node.op_type in ("Cast", "Mul", "Identity") and not any(o in read for o in node.output)]
        if not dead:
            return
        for graph, node in dead:
            graph.node.remove(node)
