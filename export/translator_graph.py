"""Assembling the in-graph translator: one ONNX graph that takes token ids and search settings
and returns token ids (see `wdctl.export.translator` for the overview, quantization and runtime).

- the encoder, in the graph that holds the search node, run once per sentence on the search's
  own inputs: it leaves, for every decoder layer, the cross-attention keys and values (batch,
  heads, length, head), and the shape that groups a sentence's beams;
- a fused decoder step (`com.microsoft.MultiHeadAttention` for self-attention with past/present
  and for cross-attention, `Sum` + `LayerNormalization` for every post-LN residual,
  `QuickGelu(alpha=1)` = swish) whose cross-attention reads those encoder values from the
  enclosing scope, a sentence's beams grouped as if they were query positions, so the keys and
  values are stored and read once per sentence, not once per beam;
- `com.microsoft.BeamSearch` with model_type=1 for every beam count (onnxruntime 1.32's
  `GreedySearch` accepts only GPT-style models; BeamSearch with one beam is greedy search). Its
  encoder subgraph is only a placeholder the op requires (a one-position zero K/V per layer, which
  the op copies over the beams and the decoder never reads).
  Each (sub)graph holds its own weights as initializers (onnxruntime pre-packs those).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from wdctl.core.errors import InputError
from wdctl.export.translator_weights import (
    AttentionWeights,
    FeedForwardWeights,
    LayerNormWeights,
    MarianWeights,
    check_weights,
)
from wdctl.passes.batching import output_limit_rule

if TYPE_CHECKING:
    from wdctl.passes.shortlist import Shortlist

OPSET = 17
MS_OPSET = 1
REST_COVARIANCE = "dec.rest_half_cov"  # the rest slot's quadratic form (`_rest_logit`): int8 leaves it float
_F32 = np.float32

# --------------------------------------------------------------------------------------------
# Graph assembly
# --------------------------------------------------------------------------------------------

class _Graph:
    """Nodes and weights of one (sub)graph.

    Weights stay initializers of the subgraph that uses them: onnxruntime pre-packs constant
    MatMul weights, but not outer-scope values (a subgraph reading its weights from the main
    graph ran about 2x slower).
    """

    def __init__(self, store: dict, prefix: str):
        self.nodes = []
        self.store = store
        self.prefix = prefix
        self.count = 0

    def weight(self, name: str, array) -> str:
        """An initializer of this graph, named with the graph's prefix: a nested graph must not
        define a name its enclosing graph defines."""
        name = self.prefix + name
        if name not in self.store:
            self.store[name] = np.ascontiguousarray(array)
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, domain: str = "",
           **attrs):
        from onnx import helper

        self.count += 1
        base = f"{self.prefix}{op_type}_{self.count}"
        if isinstance(outputs, int):
            outputs = [f"{base}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=base,
                                           domain=domain or None, **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)


def _subgraphs(graph, scope=None):
    """Yield (graph, scope) for a graph and every graph nested in it; scope maps each visible
    initializer name to the GraphProto that holds it (inner graphs shadow outer ones)."""
    from onnx import AttributeProto

    scope = dict(scope or {})
    scope.update({t.name: graph for t in graph.initializer})
    yield graph, scope
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _subgraphs(attr.g, scope)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _subgraphs(sub, scope)


def _activation(g: _Graph, x: str, kind: str) -> str:
    if kind in ("swish", "silu"):
        return g.op("QuickGelu", [x], domain="com.microsoft", alpha=1.0)
    if kind == "relu":
        return g.op("Relu", [x])
    return g.op("Gelu", [x], domain="com.microsoft")


def _ffn(g: _Graph, h: str, ffn: FeedForwardWeights, ln: LayerNormWeights, name: str, act: str, eps: float) -> str:
    f = g.op("MatMul", [h, g.weight(f"{name}.fc1.w", ffn.fc1_w)])
    f = g.op("Add", [f, g.weight(f"{name}.fc1.b", ffn.fc1_b)])
    f = _activation(g, f, act)
    f = g.op("MatMul", [f, g.weight(f"{name}.fc2.w", ffn.fc2_w)])
    return _residual_ln(g, f, h, ln, g.weight(f"{name}.fc2.b", ffn.fc2_b), name + ".final_ln", eps)


def _residual_ln(g: _Graph, x: str, residual: str, ln: LayerNormWeights, bias: str, name: str, eps: float) -> str:
    """LayerNorm(x + bias + residual) as `Sum` + `LayerNormalization`, not the contrib
    `SkipLayerNormalization`, whose CPU kernel (onnxruntime 1.32) is a scalar loop: this pair is
    1.3x faster on one row, 3-6x on 4-128 (`benchmarks/layer_norm_step.py`). `Sum`, not `Add`:
    onnxruntime fuses Add + LayerNormalization back into the slow op where it knows the shapes
    (as in that benchmark); it leaves Sum alone, and one Sum does the work of two Adds."""
    s = g.op("Sum", [x, bias, residual])
    return g.op("LayerNormalization", [s, g.weight(name + ".g", ln.gamma), g.weight(name + ".b", ln.beta)],
                axis=-1, epsilon=eps)


def _self_attention(g: _Graph, h: str, att: AttentionWeights, heads: int, name: str, mask: str = "",
                    past: tuple[str, str] | None = None, present: tuple[str, str] | None = None) -> str:
    d = att.q_w.shape[1]
    qkv_w = np.concatenate([att.q_w, att.k_w, att.v_w], axis=1)
    qkv_b = np.concatenate([att.q_b, att.k_b, att.v_b])
    qkv = g.op("MatMul", [h, g.weight(f"{name}.qkv.w", qkv_w)])
    q, k, v = g.op("Split", [qkv, g.weight("split3_" + str(d), np.array([d, d, d], dtype=np.int64))], 3, axis=-1)
    inputs = [q, k, v, g.weight(f"{name}.qkv.b", qkv_b), mask]
    outputs: list[str] | int = 1
    if present is not None:
        inputs += ["", past[0] if past else "", past[1] if past else ""]
        outputs = [f"{g.prefix}{name}.attn_out", *present]
    out = g.op("MultiHeadAttention", inputs, outputs, domain="com.microsoft", num_heads=heads)
    return out if isinstance(out, str) else out[0]


def _positions(g: _Graph, table: np.ndarray, name: str, start: str, end: str) -> str:
    return g.op("Slice", [g.weight(name, table), start, end, g.weight("axis0", np.array([0], dtype=np.int64))])


def _initializers(store: dict) -> list:
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.asarray(v), k) for k, v in store.items()]


def _cross_names(scope: str, i: int) -> tuple[str, str]:
    return f"{scope}cross_key_{i}", f"{scope}cross_value_{i}"


def _encoder_nodes(w: MarianWeights, g: _Graph, ids: str, mask: str, scope: str) -> None:
    """The encoder on (ids, mask), adding to `g` the values the decoder reads from the enclosing
    scope: `{scope}cross_key_i` and `{scope}cross_value_i` (B, heads, L, head) for each decoder
    layer, `{scope}cross_mask` (the int32 key padding mask) and `{scope}cross_q_shape` = [B, -1, d]."""
    h = g.op("Gather", [g.weight("enc.embed", _encoder_table(w)), ids])
    length = g.op("Shape", [ids], start=1, end=2)
    pos = _positions(g, w.encoder_positions, "enc.positions", g.weight("zero1", np.array([0], dtype=np.int64)), length)
    h = g.op("Add", [h, pos])
    for i, layer in enumerate(w.encoder_layers):
        name = f"enc.{i}"
        a = _self_attention(g, h, layer.self_attn, w.encoder_heads, name + ".self", mask=mask)
        a = g.op("MatMul", [a, g.weight(f"{name}.self.o.w", layer.self_attn.o_w)])
        h = _residual_ln(g, a, h, layer.self_attn_ln, g.weight(f"{name}.self.o.b", layer.self_attn.o_b),
                         name + ".self_ln", w.layer_norm_eps)
        h = _ffn(g, h, layer.ffn, layer.final_ln, name, w.activation, w.layer_norm_eps)
    # cross-attention K/V of every decoder layer in one MatMul: (B, L, 2 * layers * d_dec)
    n, heads, d = len(w.decoder_layers), w.decoder_heads, w.d_dec
    kv_w = np.concatenate([m for layer in w.decoder_layers for m in (layer.cross_attn.k_w, layer.cross_attn.v_w)], 1)
    kv_b = np.concatenate([b for layer in w.decoder_layers for b in (layer.cross_attn.k_b, layer.cross_attn.v_b)])
    kv = g.op("MatMul", [h, g.weight("enc.cross_kv.w", kv_w)])
    kv = g.op("Add", [kv, g.weight("enc.cross_kv.b", kv_b)])
    kv = g.op("Reshape", [kv, g.weight("shape_kv", np.array([0, 0, 2 * n * heads, d // heads], dtype=np.int64))])
    kv = g.op("Transpose", [kv], perm=[0, 2, 1, 3])  # (B, 2 * n * heads, L, head)
    g.op("Split", [kv, g.weight("split_kv", np.full(2 * n, heads, dtype=np.int64))],
         [name for i in range(n) for name in _cross_names(scope, i)], axis=1)
    g.op("Identity", [mask], [f"{scope}cross_mask"])
    batch = g.op("Shape", [ids], start=0, end=1)
    g.op("Concat", [batch, g.weight("q_shape_tail", np.array([-1, d], dtype=np.int64))],
         [f"{scope}cross_q_shape"], axis=0)


def _placeholder_encoder_graph(w: MarianWeights):
    """The encoder subgraph the op requires (inputs encoder_input_ids, encoder_attention_mask;
    outputs present_{key,value}_cross_i): zeros of one position, which tell the op the heads and
    head size; the op expands them over the beams and the decoder leaves them unread."""
    from onnx import TensorProto, helper

    n, heads, hd = len(w.decoder_layers), w.decoder_heads, w.d_dec // w.decoder_heads
    store: dict = {}
    g = _Graph(store, "placeholder/")
    batch = g.op("Shape", ["encoder_input_ids"], start=0, end=1)
    shape = g.op("Concat", [batch, g.weight("tail", np.array([heads, 1, hd], dtype=np.int64))], axis=0)
    zeros = g.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    names = [f"present_{kind}_cross_{i}" for i in range(n) for kind in ("key", "value")]
    for nm in names:
        g.op("Identity", [zeros], [nm])
    inputs = [helper.make_tensor_value_info("encoder_input_ids", TensorProto.INT32, ["batch", "src_len"]),
              helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "src_len"])]
    outputs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, ["batch", heads, 1, hd]) for nm in names]
    return helper.make_graph(g.nodes, "placeholder_encoder", inputs, outputs, initializer=_initializers(store))


def _cross_attention(g: _Graph, h: str, ca: AttentionWeights, heads: int, d: int, name: str, i: int,
                     scope: str) -> str:
    """Attention over the encoder's K/V of the enclosing scope, a sentence's beams grouped: the
    (B * beams, 1, d) queries become (B, beams, d), beams taking the place of query positions,
    so MultiHeadAttention reads each sentence's K/V once for all of its beams."""
    q = g.op("MatMul", [h, g.weight(f"{name}.cross.q.w", ca.q_w)])
    q = g.op("Reshape", [q, f"{scope}cross_q_shape"])
    key, value = _cross_names(scope, i)
    bias = g.weight(f"{name}.cross.qkv.b", np.concatenate([ca.q_b, np.zeros(2 * d, dtype=_F32)]))
    a = g.op("MultiHeadAttention", [q, key, value, bias, f"{scope}cross_mask"], domain="com.microsoft",
             num_heads=heads)
    return g.op("Reshape", [a, g.weight("shape_rows", np.array([-1, 1, d], dtype=np.int64))])


def _special_ids(w: MarianWeights) -> list[int]:
    """The ids a shortlist pins at its first positions, in this order, without repeats: the
    decoder start, EOS and pad (Marian's decoder start is its pad)."""
    return list(dict.fromkeys([w.decoder_start_token_id, w.eos_token_id, w.pad_token_id]))


def _shortlist_tables(shortlist: Shortlist, w: MarianWeights, size: int) -> dict[str, np.ndarray]:
    """The arrays the graph picks a batch's shortlist with (`_shortlist_nodes`):

    - `priority` (vocab,): the special ids far above everything (in `_special_ids` order, so
      that they come first), then the frequent ids in frequency order, then 0;
    - `candidates` (source vocab, C): each source id's list, padded with pad (pinned anyway),
      uint16 (or int32 past 65,535 ids) to keep the table small;
    - `weights` (C,): C - rank, what a candidate of that rank adds to its score per source token.
    """
    specials = _special_ids(w)
    if shortlist.vocab_size != w.vocab_size:
        raise InputError(f"shortlist for a vocabulary of {shortlist.vocab_size}, model has {w.vocab_size}")
    always = len(set(specials) | set(shortlist.frequent))
    if size != w.vocab_size and (size % 8 or size < always + 8 or size > w.vocab_size):
        raise InputError(f"shortlist size {size}: must be the vocabulary size ({w.vocab_size}) or a multiple of 8 "
                         f"below it and at least {always + 8} (the frequent and special ids + 8)")
    priority = np.zeros(w.vocab_size, dtype=_F32)
    for rank, t in enumerate(shortlist.frequent):
        priority[t] = 1e6 + len(shortlist.frequent) - rank
    for rank, t in enumerate(specials):
        priority[t] = 1e7 * (len(specials) - rank + 1)
    if size == w.vocab_size:  # every id scores, so every id is kept (as `set_shortlist_size` does)
        priority = np.maximum(priority, _F32(1.0))
    width = max((len(ts) for ts in shortlist.per_source.values()), default=0) or 1
    dtype = np.uint16 if w.vocab_size <= 65536 else np.int32
    candidates = np.full((w.encoder_embed.shape[0], width), w.pad_token_id, dtype=dtype)
    for s, ts in shortlist.per_source.items():
        if s < len(candidates):
            candidates[s, : len(ts)] = ts
    weights = np.arange(width, 0, -1).astype(_F32)
    return {"priority": priority, "candidates": candidates, "weights": weights}


def _shortlist_nodes(g: _Graph, w: MarianWeights, tables: dict, size: int, ids: str, mask: str, scope: str,
                     cov: np.ndarray) -> str:
    """A batch's shortlist, computed from its input ids in the graph that holds the search:
    `{scope}shortlist` (k,) int64 vocabulary ids, the k highest scores of priority + sum over
    the batch's (unpadded) source tokens of their candidates' weights, so the special ids sit at
    positions 0.. in `_special_ids` order, then the frequent ids, then candidates by score
    (lower ids first among equals: TopK's tie rule). k is the number of ids that score at all,
    rounded up to a multiple of 8, at most `size`: one sentence's shortlist is much shorter than
    a 16-sentence search's. The decoder step multiplies only these k rows
    (`{scope}shortlist_w`, (d_dec, k), and `{scope}shortlist_bias`) and pads its logits to
    `size` with -1e9 (`{scope}shortlist_pads`): `size` is fixed when the file is built, since
    the op reads the vocabulary size from the decoder's declared logits shape. The search runs
    over positions in the shortlist; `{scope}shortlist_mask` (size,) is the op's vocab_mask
    there (positions past k banned). Returns the name of the decoder's lookup table, which the
    decoder step reads from this graph too."""
    from onnx import TensorProto

    i64 = np.int64
    picked = g.op("Gather", [g.weight("shortlist.candidates", tables["candidates"]), ids])  # (B, L, C)
    picked = g.op("Reshape", [g.op("Cast", [picked], to=TensorProto.INT64), g.weight("flat", np.array([-1], i64))])
    present = g.op("Unsqueeze", [g.op("Cast", [mask], to=TensorProto.FLOAT), g.weight("axis_last", np.array([2], i64))])
    gains = g.op("Reshape", [g.op("Mul", [present, g.weight("shortlist.weights", tables["weights"])]),
                             g.weight("flat", np.array([-1], i64))])
    score = g.op("ScatterElements", [g.weight("shortlist.priority", tables["priority"]), picked, gains], axis=0,
                 reduction="add")
    scored = g.op("ReduceSum", [g.op("Cast", [g.op("Greater", [score, g.weight("zero_f", np.array([0.0], _F32))])],
                                     to=TensorProto.INT64)], keepdims=1)
    eight = g.weight("eight", np.array([8], i64))
    k = g.op("Min", [g.op("Mul", [g.op("Div", [g.op("Add", [scored, g.weight("seven", np.array([7], i64))]), eight]),
                                  eight]),
                     g.weight("shortlist.size", np.array([size], i64))])
    g.op("TopK", [score, k], [f"{scope}shortlist_score", f"{scope}shortlist"], axis=0, largest=1, sorted=1)
    # the output projection's rows: the decoder's lookup table (scaled by sqrt(d) when the model
    # scales embeddings) at the shortlist, unscaled, transposed to (d, k)
    table = _shared_decoder_table(g, w)
    rows = g.op("Gather", [table, f"{scope}shortlist"])
    if w.scale_embedding:
        rows = g.op("Mul", [rows, g.weight("dec.unscale", np.array([1 / math.sqrt(w.d_dec)], _F32))])
    g.op("Transpose", [rows], [f"{scope}shortlist_w"], perm=[1, 0])
    g.op("Gather", [g.weight("dec.final_logits_bias", _final_bias(w)), f"{scope}shortlist"], [f"{scope}shortlist_bias"])
    _rest_mass_nodes(g, w, rows, f"{scope}shortlist_bias", scope, cov)
    missing = g.op("Sub", [g.weight("shortlist.size", np.array([size], i64)), k])
    zeros = g.weight("zeros5", np.zeros(5, i64))
    g.op("Concat", [zeros, missing], [f"{scope}shortlist_pads"], axis=0)  # (rows, 1, k) -> (rows, 1, size)
    mask_pads = g.op("Concat", [g.weight("zero1_pad", np.zeros(1, i64)), missing], axis=0)
    mask = g.op("Pad", [g.op("Gather", [g.weight("vocab_mask", _vocab_mask(w)), f"{scope}shortlist"]), mask_pads,
                        g.weight("zero_i32", np.array(0, np.int32))])
    # the rest slot (position `size`) counts in the op's log-softmax, but is never emitted
    g.op("Concat", [mask, g.weight("zero1_i32", np.zeros(1, np.int32))], [f"{scope}shortlist_mask"], axis=0)
    return table


def _output_rows(w: MarianWeights) -> tuple[np.ndarray, np.ndarray]:
    """The output layer's rows [w_t, b_t] (V, d+1) float64, and which ids are live (bias above
    -1e9: the model does not ban them)."""
    bias = _final_bias(w).astype(np.float64)
    return np.concatenate([w.decoder_embed.astype(np.float64), bias[:, None]], axis=1), bias > -1e8


def _rest_covariance(w: MarianWeights, tables: dict) -> np.ndarray:
    """(d+1, d+1) float64: the covariance of the output layer's rows [w_t, b_t] over the live ids
    (bias above -1e9: the model does not ban them) that a shortlist does not pin (`priority` 0):
    the rows a batch's shortlist may leave out (`_rest_mass_nodes`)."""
    rows, live = _output_rows(w)
    rows = rows[live & (tables["priority"] <= 0)]
    if len(rows) < 2:
        return np.zeros((w.d_dec + 1, w.d_dec + 1))
    return np.cov(rows, rowvar=False, bias=True)


def _rest_mass_nodes(g: _Graph, w: MarianWeights, rows: str, bias: str, scope: str, cov: np.ndarray) -> None:
    """What the decoder step needs to estimate, per row, the log of the softmax mass of the ids
    outside the batch's shortlist (`_rest_logit`): the op log-softmaxes over the shortlist alone,
    so without it every kept id's log-probability rises by the mass left out, by a different
    amount for each hypothesis, and beam search ranks hypotheses the full search would not (the
    demo student, beam 4: -0.46 BLEU with scores renormalized over its shortlist, -0.17 with the
    full model's log-probabilities on the same shortlist). The estimate treats the left-out logits
    x_t = h·w_t + b_t as Gaussian over t: log Σ exp x_t ≈ log n + μ(h) + σ²(h)/2, with μ from the
    mean of the left-out rows [w_t, b_t] (the live table's sum, known at export, minus the
    shortlist's, once per batch) and σ² from `cov` (`_rest_covariance`, fixed at export: on the
    demo student's dev states it estimates log Z as well as each batch's own covariance, 0.034 vs
    0.040 nats mean error, against 0.16 for the renormalized scores, without a (k, d)ᵀ(k, d)
    product per batch). Ids the model bans (bias -1e9) count in neither. Leaves `{scope}rest_lin`
    (d,) = μ_h + Σ_hb and `{scope}rest_const` (1,) = log n + μ_b + Σ_bb/2 (-inf when nothing is
    left out)."""
    i64 = np.int64
    d = w.d_dec
    table, live = _output_rows(w)
    table = table[live]  # (n, d + 1)
    axis0, axis1 = g.weight("axis_0", np.array([0], i64)), g.weight("axis_1", np.array([1], i64))
    a = g.op("Concat", [rows, g.op("Unsqueeze", [bias, axis1])], axis=1)  # (k, d + 1)
    kept = g.op("Cast", [g.op("Greater", [bias, g.weight("live_bias", np.array([-1e8], _F32))])], to=1)  # (k,) 0/1
    n = g.op("Sub", [g.weight("rest.n_all", np.array([live.sum()], _F32)), g.op("ReduceSum", [kept], keepdims=1)])
    kept_sum = g.op("MatMul", [kept, a])  # (d + 1,): the live kept rows' sum
    mean = g.op("Div", [g.op("Sub", [g.weight("rest.sum_all", table.sum(0).astype(_F32)), kept_sum]),
                        g.op("Max", [n, g.weight("one_f", np.array([1.0], _F32))])])
    lo, hi, end = (g.weight(f"rest.at{i}", np.array([i], i64)) for i in (0, d, d + 1))
    g.op("Add", [g.op("Slice", [mean, lo, hi, axis0]), g.weight("rest.cov_hb", cov[:d, d].astype(_F32))],
         [f"{scope}rest_lin"])
    g.op("Add", [g.op("Add", [g.op("Log", [n]), g.op("Slice", [mean, hi, end, axis0])]),
                 g.weight("rest.half_var_b", np.array([cov[d, d] / 2], _F32))], [f"{scope}rest_const"])


def _rest_logit(g: _Graph, h: str, scope: str, cov: np.ndarray) -> str:
    """(rows, 1, 1): the estimated log-mass of the ids outside the shortlist for decoder state
    h (rows, 1, d), hᵀ(Σ_hh/2)h + (μ_h + Σ_hb)·h + const (`_rest_mass_nodes`), at least -1e9."""
    d = cov.shape[0] - 1
    quad = g.op("Add", [g.op("MatMul", [h, g.weight(REST_COVARIANCE, (cov[:d, :d] / 2).astype(_F32))]),
                        f"{scope}rest_lin"])
    total = g.op("Add", [g.op("ReduceSum", [g.op("Mul", [quad, h]), g.weight("axis_last1", np.array([-1], np.int64))],
                              keepdims=1), f"{scope}rest_const"])
    return g.op("Max", [total, g.weight("minus_inf", np.array(-1e9, _F32))])


def _shared_decoder_table(g: _Graph, w: MarianWeights) -> str:
    """The name of the decoder's lookup table in the graph that holds the search (the encoder's
    own when the embeddings are tied, so the file holds it once); the decoder step reads it."""
    table = _decoder_table(w)
    if table.shape == w.encoder_embed.shape and np.array_equal(table, _encoder_table(w)):
        return g.weight("enc.embed", _encoder_table(w))
    return g.weight("dec.embed", table)


def _encoder_table(w: MarianWeights) -> np.ndarray:
    return w.encoder_embed * _F32(math.sqrt(w.d_enc) if w.scale_embedding else 1.0)


def _decoder_table(w: MarianWeights) -> np.ndarray:
    """The decoder's lookup table as the graph stores it (embeddings pre-scaled)."""
    return w.decoder_embed * _F32(math.sqrt(w.d_dec) if w.scale_embedding else 1.0)


def _final_bias(w: MarianWeights) -> np.ndarray:
    bias = w.final_logits_bias.astype(_F32, copy=True)
    if w.renormalize_logits:  # banned tokens leave the softmax: transformers' renormalize_logits
        bias[[w.pad_token_id, *w.bad_token_ids]] = -1e9
    return bias


def _vocab_mask(w: MarianWeights) -> np.ndarray:
    """The op's vocab_mask: <pad> and the model's bad words banned."""
    mask = np.ones(w.vocab_size, dtype=np.int32)
    mask[[w.pad_token_id, *w.bad_token_ids]] = 0
    return mask


def _row_length_limit(g: _Graph, w: MarianWeights, step: str, logits: str = "logits",
                      width: int | None = None, eos: int | None = None) -> None:
    """Each row's own output limit, in the decoder step: a row (sentence x beam) whose source has
    n tokens (its `encoder_attention_mask` row sum, as the op expands it over the beams) ends at
    `output_limit(n)` = A_NUM * n // A_DEN + B (`passes.batching`, integer ops here), as
    transformers' forced EOS ends every row at max_length: once the sequence, decoder start
    token included, is limit - 1 long (this step's input at position `step` = limit - 2), the
    row's logits become -1e9 except EOS = 0, so the op's log-softmax gives EOS log-probability 0
    (exactly) and the beams finish there, scored as transformers scores a forced EOS. Rows whose
    limit is beyond the op's max_length never reach it (the op stops first), so the limit is
    min(own limit, max_length), and the op's max_length is the batch's largest limit.
    The node that made `logits` now makes a renamed tensor; the limited logits take the name.
    With a shortlist, `width` is its size and `eos` EOS's position in it."""
    from onnx import TensorProto

    from wdctl.passes.batching import LIMIT_A_DEN, LIMIT_A_NUM, LIMIT_B

    producer = next(node for node in g.nodes if logits in node.output)
    unlimited = g.prefix + "unlimited_logits"
    producer.output[list(producer.output).index(logits)] = unlimited
    n = g.op("ReduceSum", ["encoder_attention_mask", g.weight("axis1", np.array([1], dtype=np.int64))],
             keepdims=1)  # (rows, 1) int32
    limit = g.op("Add", [g.op("Div", [g.op("Mul", [n, g.weight("limit_a_num", np.array([LIMIT_A_NUM], np.int32))]),
                                      g.weight("limit_a_den", np.array([LIMIT_A_DEN], np.int32))]),
                         g.weight("limit_b", np.array([LIMIT_B], np.int32))])
    reached = g.op("Add", [g.op("Cast", [step], to=TensorProto.INT32), g.weight("two_i32", np.array([2], np.int32))])
    at_limit = g.op("Unsqueeze", [g.op("GreaterOrEqual", [reached, limit]), g.weight("axis2", np.array([2], np.int64))])
    forced = np.full(w.vocab_size if width is None else width, -1e9, dtype=_F32)
    forced[w.eos_token_id if eos is None else eos] = 0.0
    g.op("Where", [at_limit, g.weight("forced_eos", forced), unlimited], [logits])


def _decoder_graph(w: MarianWeights, scope: str, shortlist: tuple[int, str] | None = None):
    """One decoder step: input_ids (B * beams, 1), the op's masks and past K/V -> logits, present
    self K/V; the cross-attention reads `{scope}cross_*` from the enclosing graph.
    With `shortlist` = (size, name of the lookup table in the enclosing graph, `_rest_covariance`),
    the ids and logits are positions in `{scope}shortlist` (`_shortlist_nodes`), plus the rest
    slot (`_rest_logit`)."""
    from onnx import TensorProto, helper

    store: dict = {}
    g = _Graph(store, "dec/")
    n, heads, d = len(w.decoder_layers), w.decoder_heads, w.d_dec
    hd = d // heads
    if shortlist is None:
        h = g.op("Gather", [g.weight("dec.embed", _decoder_table(w)), "input_ids"])
    else:
        h = g.op("Gather", [shortlist[1], g.op("Gather", [f"{scope}shortlist", "input_ids"])])
    step = g.op("Shape", ["past_key_self_0"], start=2, end=3)
    step1 = g.op("Add", [step, g.weight("one1", np.array([1], dtype=np.int64))])
    if np.array_equal(w.decoder_positions, w.encoder_positions):  # one table, the enclosing graph's
        positions = g.op("Slice", [f"{scope}enc/enc.positions", step, step1, g.weight("axis0", np.array([0], np.int64))])
    else:
        positions = _positions(g, w.decoder_positions, "dec.positions", step, step1)
    h = g.op("Add", [h, positions])
    for i, layer in enumerate(w.decoder_layers):
        name = f"dec.{i}"
        a = _self_attention(g, h, layer.self_attn, heads, name + ".self",
                            past=(f"past_key_self_{i}", f"past_value_self_{i}"),
                            present=(f"present_key_self_{i}", f"present_value_self_{i}"))
        a = g.op("MatMul", [a, g.weight(f"{name}.self.o.w", layer.self_attn.o_w)])
        h = _residual_ln(g, a, h, layer.self_attn_ln, g.weight(f"{name}.self.o.b", layer.self_attn.o_b),
                         name + ".self_ln", w.layer_norm_eps)
        ca = layer.cross_attn
        a = _cross_attention(g, h, ca, heads, d, name, i, scope)
        a = g.op("MatMul", [a, g.weight(f"{name}.cross.o.w", ca.o_w)])
        h = _residual_ln(g, a, h, layer.cross_attn_ln, g.weight(f"{name}.cross.o.b", ca.o_b),
                         name + ".cross_ln", w.layer_norm_eps)
        h = _ffn(g, h, layer.ffn, layer.final_ln, name, w.activation, w.layer_norm_eps)
    if shortlist is None:
        logits = g.op("MatMul", [h, g.weight("dec.lm_head.w", w.decoder_embed.T)])
        g.op("Add", [logits, g.weight("dec.final_logits_bias", _final_bias(w))], ["logits"])
        _row_length_limit(g, w, step)
    else:
        logits = g.op("Add", [g.op("MatMul", [h, f"{scope}shortlist_w"]), f"{scope}shortlist_bias"])
        logits = g.op("Pad", [logits, f"{scope}shortlist_pads", g.weight("minus_inf", np.array(-1e9, _F32))])
        g.op("Concat", [logits, _rest_logit(g, h, scope, shortlist[2])], ["logits"], axis=2)  # (rows, 1, size + 1)
        _row_length_limit(g, w, step, width=shortlist[0] + 1, eos=_special_ids(w).index(w.eos_token_id))
    width = w.vocab_size if shortlist is None else shortlist[0] + 1
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", 1]),  # fixed 1: see module doc
              helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "src_len"])]
    for i in range(n):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_self_{i}", TensorProto.FLOAT,
                                                        ["batch", heads, "past_len", hd]))
    for i in range(n):  # the placeholder's zeros, required by the op, unread
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_cross_{i}", TensorProto.FLOAT,
                                                        ["batch", heads, 1, hd]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, width])]
    for i in range(n):
        for kind in ("key", "value"):
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_self_{i}", TensorProto.FLOAT,
                                                         ["batch", heads, "total_len", hd]))
    return helper.make_graph(g.nodes, "marian_decoder", inputs, outputs, initializer=_initializers(store))


def _search(w: MarianWeights, early_stopping: bool, ids: str, mask: str, out: str, scope: str,
            shortlist: tuple[dict, int] | None = None):
    """(nodes, initializers) of one search over (ids, mask) -> `out`: the encoder's nodes, then
    the BeamSearch node, for the graph that will hold them (`scope` keeps names apart).
    `shortlist` = (`_shortlist_tables`, size): the search runs over the batch's shortlist
    positions and one Gather maps its sequences back to vocabulary ids."""
    from onnx import TensorProto, helper

    store: dict = {}
    g = _Graph(store, f"{scope}enc/")
    _encoder_nodes(w, g, ids, mask, scope)
    ids_attrs = dict(eos_token_id=w.eos_token_id, pad_token_id=w.pad_token_id,
                     decoder_start_token_id=w.decoder_start_token_id)
    vocab_mask, found = "vocab_mask", out
    decoder_shortlist = None
    if shortlist is not None:
        tables, size = shortlist
        cov = _rest_covariance(w, tables)
        table = _shortlist_nodes(g, w, tables, size, ids, mask, scope, cov)
        specials = _special_ids(w)
        ids_attrs = {k: specials.index(v) for k, v in ids_attrs.items()}
        vocab_mask, found = f"{scope}shortlist_mask", f"{out}_positions"
        decoder_shortlist = (size, table, cov)
    inputs = [ids, "max_length", "min_length", "num_beams", "num_return_sequences", "length_penalty",
              "repetition_penalty", vocab_mask, "", mask]
    node = helper.make_node("BeamSearch", inputs, [found], name=f"{scope}BeamSearch", domain="com.microsoft",
                            **ids_attrs, model_type=1, encoder=_placeholder_encoder_graph(w),
                            decoder=_decoder_graph(w, scope, decoder_shortlist),
                            no_repeat_ngram_size=0, early_stopping=int(bool(early_stopping)))
    nodes = [*g.nodes, node]
    if shortlist is not None:
        tail = _Graph(store, f"{scope}out/")
        tail.op("Cast", [tail.op("Gather", [f"{scope}shortlist", found])], [out], to=TensorProto.INT32)
        nodes += tail.nodes
    return nodes, store


def _per_sentence_loop(w: MarianWeights, early_stopping: bool, store: dict, shortlist=None):
    """Nodes running the search on one sentence at a time (a Loop over the batch) -> `beam_sequences`."""
    from onnx import TensorProto, helper

    store["zero_i64"] = np.array([0], dtype=np.int64)
    store["one_i64"] = np.array([1], dtype=np.int64)
    search_nodes, search_store = _search(w, early_stopping, "one_ids", "one_mask", "one_sequences", "one/",
                                         shortlist)
    body_nodes = [
        helper.make_node("Unsqueeze", ["i", "zero_i64"], ["i1"]),
        helper.make_node("Add", ["i1", "one_i64"], ["i2"]),
        helper.make_node("Slice", ["input_ids", "i1", "i2", "zero_i64"], ["one_ids"]),
        helper.make_node("Slice", ["attention_mask", "i1", "i2", "zero_i64"], ["one_mask"]),
        *search_nodes,
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        body_nodes, "per_sentence",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("one_sequences", TensorProto.INT32, [1, 1, "max_length"])],
        initializer=_initializers(search_store))
    return [
        helper.make_node("Shape", ["input_ids"], ["batch_1d"], start=0, end=1),
        helper.make_node("Squeeze", ["batch_1d"], ["batch_n"]),
        helper.make_node("Loop", ["batch_n", ""], ["stacked_sequences"], body=body),
        helper.make_node("Squeeze", ["stacked_sequences", "one_i64"], ["beam_sequences"]),
    ]


def build_translator(weights: MarianWeights, path=None, *, early_stopping: bool = True,
                     batched_beams: bool = False, shortlist: Shortlist | None = None, shortlist_size: int = 0):
    """Build the translator ModelProto (and save it to `path` when given).

    Graph inputs: `input_ids` int32 (batch, src_len), `attention_mask` int32 (batch, src_len),
    `max_length`, `min_length`, `num_beams` int32 (1,), `length_penalty`, `repetition_penalty`
    float (1,). Output: `sequences` int32 (batch, 1, max_length), starting with the decoder start
    token and right-padded with `<pad>`.
    `early_stopping` is an attribute of the op, so it is fixed here. True (the default) is what
    wdctl's `translate_torch` passes to `generate` and reproduces transformers exactly, batched.
    False (transformers' own default) cannot match transformers exactly: the op's stop test uses
    the best candidate score including finished (EOS) candidates where transformers uses the best
    running beam, so the op may search longer and return a higher-scoring hypothesis; its batched
    stop test also reads another row's scores for batch rows >= 2 (onnxruntime 1.32), so with
    False beam search runs one sentence at a time inside the graph (a Loop) unless
    `batched_beams=True`.
    num_beams 1 is greedy search (BeamSearch with one beam and early_stopping=1).
    With a `shortlist`, each search multiplies only `shortlist_size` (default: the shortlist's
    own `size`) rows of the output projection, picked per batch from its source ids
    (`_shortlist_nodes`); the output is the same vocabulary ids.
    Metadata records the vocabulary size, the position table size, the special ids and the
    shortlist size (0: none).
    """
    from onnx import TensorProto, helper

    check_weights(weights)
    shortlist_size = (shortlist_size or shortlist.size) if shortlist is not None else 0
    tables = None if shortlist is None else (_shortlist_tables(shortlist, weights, shortlist_size), shortlist_size)
    store: dict[str, np.ndarray] = {} if tables else {"vocab_mask": _vocab_mask(weights)}
    store["num_return_sequences"] = np.array([1], dtype=np.int32)

    seq_info = helper.make_tensor_value_info
    # GreedySearch refuses model_type=1 in onnxruntime 1.32 (GPT only). BeamSearch with one beam
    # and early_stopping=1 is exactly greedy search (it stops at the first EOS), so with
    # early_stopping=True one BeamSearch node serves every beam count.
    if early_stopping:
        nodes, search_store = _search(weights, True, "input_ids", "attention_mask", "sequences", "", tables)
        store.update(search_store)
    else:
        # transformers' early_stopping=False is not greedy with one beam: an If picks a one-beam
        # early_stopping=1 search for num_beams 1 (each branch holds its own encoder and
        # decoder, weights included: outer-scope weights would not be pre-packed).
        greedy_nodes, greedy_store = _search(weights, True, "input_ids", "attention_mask", "greedy_sequences",
                                             "greedy/", tables)
        greedy_branch = helper.make_graph(
            greedy_nodes, "greedy", [], [seq_info("greedy_sequences", TensorProto.INT32, ["batch", 1, "max_length"])],
            initializer=_initializers(greedy_store))
        if batched_beams:
            beam_nodes, beam_store = _search(weights, False, "input_ids", "attention_mask", "beam_sequences",
                                             "beams/", tables)
        else:
            # the op's early-stop test (early_stopping=0) reads another sentence's scores for
            # batch rows >= 2 in onnxruntime 1.32: one sentence at a time keeps rows independent.
            beam_nodes, beam_store = _per_sentence_loop(weights, False, store, tables), {}
        beam_branch = helper.make_graph(beam_nodes, "beams", [],
                                        [seq_info("beam_sequences", TensorProto.INT32, ["batch", 1, "max_length"])],
                                        initializer=_initializers(beam_store))
        store["two_i32"] = np.array([2], dtype=np.int32)
        nodes = [
            helper.make_node("GreaterOrEqual", ["num_beams", "two_i32"], ["use_beams_1d"]),
            helper.make_node("Squeeze", ["use_beams_1d"], ["use_beams"]),
            helper.make_node("If", ["use_beams"], ["sequences"], then_branch=beam_branch, else_branch=greedy_branch),
        ]
    inputs = [seq_info("input_ids", TensorProto.INT32, ["batch", "src_len"]),
              seq_info("attention_mask", TensorProto.INT32, ["batch", "src_len"])]
    for nm in ("max_length", "min_length", "num_beams"):
        inputs.append(seq_info(nm, TensorProto.INT32, [1]))
    for nm in ("length_penalty", "repetition_penalty"):
        inputs.append(seq_info(nm, TensorProto.FLOAT, [1]))
    outputs = [seq_info("sequences", TensorProto.INT32, ["batch", 1, "max_length"])]
    graph = helper.make_graph(nodes, "wdctl_translator", inputs, outputs, initializer=_initializers(store))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", MS_OPSET)],
                              producer_name="wdctl.export.translator")
    model.ir_version = 8
    meta = dict(vocab_size=weights.vocab_size, max_positions=weights.max_positions,
                pad_token_id=weights.pad_token_id, eos_token_id=weights.eos_token_id,
                decoder_start_token_id=weights.decoder_start_token_id, early_stopping=int(bool(early_stopping)),
                d_enc=weights.d_enc, d_dec=weights.d_dec, precision="fp32",
                batched_beams=int(bool(early_stopping or batched_beams)), output_limit=output_limit_rule(),
                shortlist_size=shortlist_size)
    if shortlist is not None:  # the ids left out keep their softmax mass (`_rest_mass_nodes`)
        meta["shortlist_mass"] = "gaussian"
    helper.set_model_props(model, {f"wdctl.{k}": str(v) for k, v in meta.items()})
    if path is not None:
        save_model(model, path)
    return model


def set_shortlist_size(model, size: int) -> None:
    """Give a translator built with a shortlist (ModelProto, edited in place) `size` positions:
    at its vocabulary size, every id is in every batch's shortlist and the search is the full
    one (what `wdctl translate --no-shortlist` runs). Every size-dependent value is set here:
    the TopK count, the decoder's declared logits width (the op's vocabulary size) and the
    forced-EOS row; EOS keeps its pinned position."""
    from onnx import numpy_helper

    # the decoder's logits: the shortlist's positions, plus the rest slot (files built before it have none)
    width = size + int(any(p.key == "wdctl.shortlist_mass" for p in model.metadata_props))
    for graph, _ in _subgraphs(model.graph):
        for i, tensor in enumerate(graph.initializer):
            if tensor.name.endswith("shortlist.size"):
                graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array([size], np.int64), tensor.name))
            elif tensor.name.endswith("shortlist.priority") and size >= len(numpy_helper.to_array(tensor)):
                # every id scores, so every id is kept: the full search
                graph.initializer[i].CopyFrom(numpy_helper.from_array(
                    np.maximum(numpy_helper.to_array(tensor), _F32(1.0)), tensor.name))
            elif tensor.name.endswith("forced_eos"):
                old = numpy_helper.to_array(tensor)
                row = np.full(width, -1e9, dtype=_F32)
                row[int(np.argmax(old))] = 0.0
                graph.initializer[i].CopyFrom(numpy_helper.from_array(row, tensor.name))
        if graph.name == "marian_decoder":
            graph.output[0].type.tensor_type.shape.dim[2].dim_value = width
    for prop in model.metadata_props:
        if prop.key == "wdctl.shortlist_size":
            prop.value = str(size)


def save_model(model, path) -> None:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 1_900_000_000:
        onnx.save_model(model, path, save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, path)
