"""A self-contained onnxruntime translator: the whole search inside one ONNX graph.

`build_translator(weights)` assembles, from plain numpy weights, one graph that takes token ids
and search settings and returns token ids:

- an encoder subgraph (run once by the search op) that returns the cross-attention K/V of every
  decoder layer, already projected to the decoder width and in (batch, heads, length, head) layout;
- a fused decoder step (`com.microsoft.MultiHeadAttention` for self-attention with past/present
  and for cross-attention over the cached K/V with a key padding mask, `SkipLayerNormalization`
  for every post-LN residual, `QuickGelu(alpha=1)` = swish);
- `com.microsoft.BeamSearch` with model_type=1 for every beam count (onnxruntime 1.32's
  `GreedySearch` accepts only GPT-style models; BeamSearch with one beam is greedy search).
  Each subgraph holds its own weights as initializers (onnxruntime pre-packs those).

`quantize_translator(src, dst)` stores the weight operand of every MatMul (in every subgraph) as
int8 with per-column scales and runs it with `DynamicQuantizeMatMul`; attention's
activation x activation products stay float (they are inside MultiHeadAttention anyway).

`OnnxTranslator(path)` runs the file in a plain `InferenceSession` on id lists and undoes the
documented differences from transformers' `generate` (see `OnnxTranslator.generate`).

The weights come as a `MarianWeights` (`marian_weights(model)` extracts one from a
`MarianMTModel`); the decoder may be narrower than the encoder (d_dec != d_enc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from wdctl.core.errors import InputError

MAX_BEAMS = 64
OPSET = 17
MS_OPSET = 1
_F32 = np.float32


# --------------------------------------------------------------------------------------------
# A plain description of the weights
# --------------------------------------------------------------------------------------------

@dataclass
class AttentionWeights:
    """Projections as x @ w + b: w is (in, out). For cross-attention, k/v map d_enc -> d_dec."""

    q_w: np.ndarray
    q_b: np.ndarray
    k_w: np.ndarray
    k_b: np.ndarray
    v_w: np.ndarray
    v_b: np.ndarray
    o_w: np.ndarray
    o_b: np.ndarray


@dataclass
class LayerNormWeights:
    gamma: np.ndarray
    beta: np.ndarray


@dataclass
class FeedForwardWeights:
    fc1_w: np.ndarray  # (d, ffn)
    fc1_b: np.ndarray
    fc2_w: np.ndarray  # (ffn, d)
    fc2_b: np.ndarray


@dataclass
class EncoderLayerWeights:
    self_attn: AttentionWeights
    self_attn_ln: LayerNormWeights
    ffn: FeedForwardWeights
    final_ln: LayerNormWeights


@dataclass
class DecoderLayerWeights:
    self_attn: AttentionWeights
    self_attn_ln: LayerNormWeights
    cross_attn: AttentionWeights
    cross_attn_ln: LayerNormWeights
    ffn: FeedForwardWeights
    final_ln: LayerNormWeights


@dataclass
class MarianWeights:
    """Everything the translator graph needs: a post-LN Marian transformer.

    Embedding tables are unscaled (the graph multiplies by sqrt(d) when `scale_embedding`);
    `decoder_embed` is tied to the output projection (logits = h @ decoder_embed.T + bias).
    """

    encoder_embed: np.ndarray  # (V_src, d_enc)
    decoder_embed: np.ndarray  # (V, d_dec)
    final_logits_bias: np.ndarray  # (V,)
    encoder_positions: np.ndarray  # (P, d_enc)
    decoder_positions: np.ndarray  # (P, d_dec)
    encoder_layers: list[EncoderLayerWeights]
    decoder_layers: list[DecoderLayerWeights]
    encoder_heads: int
    decoder_heads: int
    pad_token_id: int
    eos_token_id: int
    decoder_start_token_id: int
    scale_embedding: bool = True
    activation: str = "swish"
    layer_norm_eps: float = 1e-5
    bad_token_ids: tuple[int, ...] = field(default=())  # banned everywhere; <pad> is always banned
    renormalize_logits: bool = False  # generation_config.renormalize_logits (OPUS-MT hub models set it)

    @property
    def d_enc(self) -> int:
        return int(self.encoder_embed.shape[1])

    @property
    def d_dec(self) -> int:
        return int(self.decoder_embed.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self.decoder_embed.shape[0])

    @property
    def max_positions(self) -> int:
        return int(min(self.encoder_positions.shape[0], self.decoder_positions.shape[0]))


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy().astype(_F32, copy=True)


def _attention(att) -> AttentionWeights:
    return AttentionWeights(_np(att.q_proj.weight).T, _np(att.q_proj.bias), _np(att.k_proj.weight).T,
                            _np(att.k_proj.bias), _np(att.v_proj.weight).T, _np(att.v_proj.bias),
                            _np(att.out_proj.weight).T, _np(att.out_proj.bias))


def _ln(ln) -> LayerNormWeights:
    return LayerNormWeights(_np(ln.weight), _np(ln.bias))


def marian_weights(model) -> MarianWeights:
    """Extract a `MarianWeights` from a `transformers.MarianMTModel` (config + modules)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) != "marian":
        raise InputError(f"model type '{getattr(cfg, 'model_type', None)}' is not MarianMT")
    if getattr(cfg, "normalize_before", False):
        raise InputError("pre-LayerNorm Marian is not supported by the translator graph")
    enc, dec = model.model.encoder, model.model.decoder
    lm_head = model.get_output_embeddings().weight
    dec_embed = dec.embed_tokens.weight
    if lm_head.data_ptr() != dec_embed.data_ptr() and not np.array_equal(_np(lm_head), _np(dec_embed)):
        raise InputError("the translator graph needs the output layer tied to the decoder embeddings")
    eps = enc.layers[0].self_attn_layer_norm.eps
    enc_layers = [EncoderLayerWeights(_attention(layer.self_attn), _ln(layer.self_attn_layer_norm),
                                      FeedForwardWeights(_np(layer.fc1.weight).T, _np(layer.fc1.bias),
                                                         _np(layer.fc2.weight).T, _np(layer.fc2.bias)),
                                      _ln(layer.final_layer_norm)) for layer in enc.layers]
    dec_layers = [DecoderLayerWeights(_attention(layer.self_attn), _ln(layer.self_attn_layer_norm),
                                      _attention(layer.encoder_attn), _ln(layer.encoder_attn_layer_norm),
                                      FeedForwardWeights(_np(layer.fc1.weight).T, _np(layer.fc1.bias),
                                                         _np(layer.fc2.weight).T, _np(layer.fc2.bias)),
                                      _ln(layer.final_layer_norm)) for layer in dec.layers]
    bad = []
    gen = getattr(model, "generation_config", None)
    for words in (getattr(gen, "bad_words_ids", None) or []):
        if len(words) != 1:
            raise InputError("multi-token bad_words_ids are not supported by the translator graph")
        bad.append(int(words[0]))
    return MarianWeights(
        encoder_embed=_np(enc.embed_tokens.weight), decoder_embed=_np(dec_embed),
        final_logits_bias=_np(model.final_logits_bias).reshape(-1),
        encoder_positions=_np(enc.embed_positions.weight), decoder_positions=_np(dec.embed_positions.weight),
        encoder_layers=enc_layers, decoder_layers=dec_layers,
        encoder_heads=int(cfg.encoder_attention_heads), decoder_heads=int(cfg.decoder_attention_heads),
        pad_token_id=int(cfg.pad_token_id), eos_token_id=int(cfg.eos_token_id),
        decoder_start_token_id=int(cfg.decoder_start_token_id), scale_embedding=bool(cfg.scale_embedding),
        activation=str(cfg.activation_function), layer_norm_eps=float(eps), bad_token_ids=tuple(bad),
        renormalize_logits=bool(getattr(gen, "renormalize_logits", False)))


def _check_weights(w: MarianWeights) -> None:
    for name, heads, d in (("encoder", w.encoder_heads, w.d_enc), ("decoder", w.decoder_heads, w.d_dec)):
        if heads < 1 or d % heads:
            raise InputError(f"{name} width {d} is not divisible by {heads} heads")
    if w.decoder_positions.shape[1] != w.d_dec or w.encoder_positions.shape[1] != w.d_enc:
        raise InputError("position tables do not match the model widths")
    if w.activation not in _ACTIVATIONS:
        raise InputError(f"activation '{w.activation}' is not supported (supported: {', '.join(_ACTIVATIONS)})")
    if not w.decoder_layers or not w.encoder_layers:
        raise InputError("the translator graph needs at least one encoder and one decoder layer")
    for layer in w.decoder_layers:
        if layer.cross_attn.k_w.shape != (w.d_enc, w.d_dec) or layer.cross_attn.v_w.shape != (w.d_enc, w.d_dec):
            raise InputError("cross-attention K/V projections must map d_enc -> d_dec")


# --------------------------------------------------------------------------------------------
# Graph assembly
# --------------------------------------------------------------------------------------------

_ACTIVATIONS = ("swish", "silu", "relu", "gelu")


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
    return _skip_ln(g, f, h, ln, g.weight(f"{name}.fc2.b", ffn.fc2_b), name + ".final_ln", eps)


def _skip_ln(g: _Graph, x: str, residual: str, ln: LayerNormWeights, bias: str, name: str, eps: float) -> str:
    out = g.op("SkipLayerNormalization",
               [x, residual, g.weight(name + ".g", ln.gamma), g.weight(name + ".b", ln.beta), bias],
               domain="com.microsoft", epsilon=eps)
    return out


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


def _encoder_graph(w: MarianWeights, store: dict):
    """Inputs encoder_input_ids, encoder_attention_mask; outputs present_{key,value}_cross_i."""
    from onnx import TensorProto, helper

    g = _Graph(store, "enc/")
    scale = math.sqrt(w.d_enc) if w.scale_embedding else 1.0
    h = g.op("Gather", [g.weight("enc.embed", w.encoder_embed * _F32(scale)), "encoder_input_ids"])
    length = g.op("Shape", ["encoder_input_ids"], start=1, end=2)
    pos = _positions(g, w.encoder_positions, "enc.positions", g.weight("zero1", np.array([0], dtype=np.int64)), length)
    h = g.op("Add", [h, pos])
    for i, layer in enumerate(w.encoder_layers):
        name = f"enc.{i}"
        a = _self_attention(g, h, layer.self_attn, w.encoder_heads, name + ".self", mask="encoder_attention_mask")
        a = g.op("MatMul", [a, g.weight(f"{name}.self.o.w", layer.self_attn.o_w)])
        h = _skip_ln(g, a, h, layer.self_attn_ln, g.weight(f"{name}.self.o.b", layer.self_attn.o_b),
                     name + ".self_ln", w.layer_norm_eps)
        h = _ffn(g, h, layer.ffn, layer.final_ln, name, w.activation, w.layer_norm_eps)
    # cross-attention K/V of every decoder layer in one MatMul: (B, L, 2 * layers * d_dec)
    n, heads, d = len(w.decoder_layers), w.decoder_heads, w.d_dec
    kv_w = np.concatenate([m for layer in w.decoder_layers for m in (layer.cross_attn.k_w, layer.cross_attn.v_w)], 1)
    kv_b = np.concatenate([b for layer in w.decoder_layers for b in (layer.cross_attn.k_b, layer.cross_attn.v_b)])
    kv = g.op("MatMul", [h, g.weight("enc.cross_kv.w", kv_w)])
    kv = g.op("Add", [kv, g.weight("enc.cross_kv.b", kv_b)])
    kv = g.op("Reshape", [kv, g.weight(f"shape_kv", np.array([0, 0, 2 * n * heads, d // heads], dtype=np.int64))])
    kv = g.op("Transpose", [kv], perm=[0, 2, 1, 3])  # (B, 2 * n * heads, L, head)
    names = [f"present_{kind}_cross_{i}" for i in range(n) for kind in ("key", "value")]
    g.op("Split", [kv, g.weight(f"split_kv", np.full(2 * n, heads, dtype=np.int64))], names, axis=1)
    inputs = [helper.make_tensor_value_info("encoder_input_ids", TensorProto.INT32, ["batch", "src_len"]),
              helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "src_len"])]
    outputs = [helper.make_tensor_value_info(nm, TensorProto.FLOAT, ["batch", heads, "src_len", d // heads])
               for nm in names]
    return helper.make_graph(g.nodes, "marian_encoder", inputs, outputs, initializer=_initializers(store))


def _decoder_graph(w: MarianWeights, store: dict):
    """One decoder step: input_ids (B, 1), encoder_attention_mask, past self/cross K/V -> logits, present self."""
    from onnx import TensorProto, helper

    g = _Graph(store, "dec/")
    n, heads, d = len(w.decoder_layers), w.decoder_heads, w.d_dec
    hd = d // heads
    scale = math.sqrt(d) if w.scale_embedding else 1.0
    h = g.op("Gather", [g.weight("dec.embed", w.decoder_embed * _F32(scale)), "input_ids"])
    step = g.op("Shape", ["past_key_self_0"], start=2, end=3)
    step1 = g.op("Add", [step, g.weight("one1", np.array([1], dtype=np.int64))])
    h = g.op("Add", [h, _positions(g, w.decoder_positions, "dec.positions", step, step1)])
    zeros_kv = np.zeros(2 * d, dtype=_F32)
    for i, layer in enumerate(w.decoder_layers):
        name = f"dec.{i}"
        a = _self_attention(g, h, layer.self_attn, heads, name + ".self",
                            past=(f"past_key_self_{i}", f"past_value_self_{i}"),
                            present=(f"present_key_self_{i}", f"present_value_self_{i}"))
        a = g.op("MatMul", [a, g.weight(f"{name}.self.o.w", layer.self_attn.o_w)])
        h = _skip_ln(g, a, h, layer.self_attn_ln, g.weight(f"{name}.self.o.b", layer.self_attn.o_b),
                     name + ".self_ln", w.layer_norm_eps)
        ca = layer.cross_attn
        q = g.op("MatMul", [h, g.weight(f"{name}.cross.q.w", ca.q_w)])
        a = g.op("MultiHeadAttention", [q, f"past_key_cross_{i}", f"past_value_cross_{i}",
                                        g.weight(f"{name}.cross.qkv.b", np.concatenate([ca.q_b, zeros_kv])),
                                        "encoder_attention_mask"], domain="com.microsoft", num_heads=heads)
        a = g.op("MatMul", [a, g.weight(f"{name}.cross.o.w", ca.o_w)])
        h = _skip_ln(g, a, h, layer.cross_attn_ln, g.weight(f"{name}.cross.o.b", ca.o_b),
                     name + ".cross_ln", w.layer_norm_eps)
        h = _ffn(g, h, layer.ffn, layer.final_ln, name, w.activation, w.layer_norm_eps)
    bias = w.final_logits_bias.astype(_F32, copy=True)
    if w.renormalize_logits:  # banned tokens leave the softmax: transformers' renormalize_logits
        bias[[w.pad_token_id, *w.bad_token_ids]] = -1e9
    logits = g.op("MatMul", [h, g.weight("dec.lm_head.w", w.decoder_embed.T)])
    g.op("Add", [logits, g.weight("dec.final_logits_bias", bias)], ["logits"])
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", 1]),  # fixed 1: see module doc
              helper.make_tensor_value_info("encoder_attention_mask", TensorProto.INT32, ["batch", "src_len"])]
    for i in range(n):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_self_{i}", TensorProto.FLOAT,
                                                        ["batch", heads, "past_len", hd]))
    for i in range(n):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_{kind}_cross_{i}", TensorProto.FLOAT,
                                                        ["batch", heads, "src_len", hd]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, w.vocab_size])]
    for i in range(n):
        for kind in ("key", "value"):
            outputs.append(helper.make_tensor_value_info(f"present_{kind}_self_{i}", TensorProto.FLOAT,
                                                         ["batch", heads, "total_len", hd]))
    return helper.make_graph(g.nodes, "marian_decoder", inputs, outputs, initializer=_initializers(store))


def _beam_node(w: MarianWeights, encoder, decoder, early_stopping: bool, ids: str, mask: str, out: str, name: str):
    from onnx import helper

    inputs = [ids, "max_length", "min_length", "num_beams", "num_return_sequences", "length_penalty",
              "repetition_penalty", "vocab_mask", "", mask]
    return helper.make_node("BeamSearch", inputs, [out], name=name, domain="com.microsoft",
                            eos_token_id=w.eos_token_id, pad_token_id=w.pad_token_id,
                            decoder_start_token_id=w.decoder_start_token_id, model_type=1, encoder=encoder,
                            decoder=decoder, no_repeat_ngram_size=0, early_stopping=int(bool(early_stopping)))


def _per_sentence_loop(w: MarianWeights, encoder, decoder, early_stopping: bool, store: dict):
    """Nodes running BeamSearch on one sentence at a time (a Loop over the batch) -> `beam_sequences`."""
    from onnx import TensorProto, helper

    store["zero_i64"] = np.array([0], dtype=np.int64)
    store["one_i64"] = np.array([1], dtype=np.int64)
    body_nodes = [
        helper.make_node("Unsqueeze", ["i", "zero_i64"], ["i1"]),
        helper.make_node("Add", ["i1", "one_i64"], ["i2"]),
        helper.make_node("Slice", ["input_ids", "i1", "i2", "zero_i64"], ["one_ids"]),
        helper.make_node("Slice", ["attention_mask", "i1", "i2", "zero_i64"], ["one_mask"]),
        _beam_node(w, encoder, decoder, early_stopping, "one_ids", "one_mask", "one_sequences", "BeamSearch_one"),
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
    ]
    body = helper.make_graph(
        body_nodes, "per_sentence",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("one_sequences", TensorProto.INT32, [1, 1, "max_length"])])
    return [
        helper.make_node("Shape", ["input_ids"], ["batch_1d"], start=0, end=1),
        helper.make_node("Squeeze", ["batch_1d"], ["batch_n"]),
        helper.make_node("Loop", ["batch_n", ""], ["stacked_sequences"], body=body),
        helper.make_node("Squeeze", ["stacked_sequences", "one_i64"], ["beam_sequences"]),
    ]


def build_translator(weights: MarianWeights, path=None, *, early_stopping: bool = True,
                     batched_beams: bool = False):
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
    Metadata records the vocabulary size, the position table size and the special ids.
    """
    from onnx import TensorProto, helper

    _check_weights(weights)
    store: dict[str, np.ndarray] = {}
    encoder = _encoder_graph(weights, {})
    decoder = _decoder_graph(weights, {})
    vocab_mask = np.ones(weights.vocab_size, dtype=np.int32)
    vocab_mask[[weights.pad_token_id, *weights.bad_token_ids]] = 0
    store["vocab_mask"] = vocab_mask
    store["num_return_sequences"] = np.array([1], dtype=np.int32)

    seq_info = helper.make_tensor_value_info
    # GreedySearch refuses model_type=1 in onnxruntime 1.32 (GPT only). BeamSearch with one beam
    # and early_stopping=1 is exactly greedy search (it stops at the first EOS), so with
    # early_stopping=True one BeamSearch node serves every beam count.
    if early_stopping:
        nodes = [_beam_node(weights, encoder, decoder, True, "input_ids", "attention_mask", "sequences",
                            "BeamSearch")]
    else:
        # transformers' early_stopping=False is not greedy with one beam: an If picks a one-beam
        # early_stopping=1 search for num_beams 1 (the subgraphs, weights included, are stored
        # twice: outer-scope weights would not be pre-packed).
        greedy_branch = helper.make_graph(
            [_beam_node(weights, encoder, decoder, True, "input_ids", "attention_mask", "greedy_sequences",
                        "BeamSearch_greedy")],
            "greedy", [], [seq_info("greedy_sequences", TensorProto.INT32, ["batch", 1, "max_length"])])
        if batched_beams:
            beam_nodes = [_beam_node(weights, encoder, decoder, False, "input_ids", "attention_mask",
                                     "beam_sequences", "BeamSearch_beams")]
        else:
            # the op's early-stop test (early_stopping=0) reads another sentence's scores for
            # batch rows >= 2 in onnxruntime 1.32: one sentence at a time keeps rows independent.
            beam_nodes = _per_sentence_loop(weights, encoder, decoder, False, store)
        beam_branch = helper.make_graph(beam_nodes, "beams", [],
                                        [seq_info("beam_sequences", TensorProto.INT32, ["batch", 1, "max_length"])])
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
                batched_beams=int(bool(early_stopping or batched_beams)))
    helper.set_model_props(model, {f"wdctl.{k}": str(v) for k, v in meta.items()})
    if path is not None:
        _save(model, path)
    return model


def _save(model, path) -> None:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 1_900_000_000:
        onnx.save_model(model, path, save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, path)


def export_translator(model, path, *, early_stopping: bool = True, int8_path=None):
    """Build the translator of a `MarianMTModel`, write it to `path` (and its weight-only int8
    copy to `int8_path` when given); returns the path."""
    model_proto = build_translator(marian_weights(model), path, early_stopping=early_stopping)
    if int8_path is not None:
        quantize_translator(model_proto, int8_path)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Weight-only int8
# --------------------------------------------------------------------------------------------

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


def quantize_translator(src, dst, *, min_elements: int = 0):
    """Weight-only int8: every MatMul whose second operand is an initializer (in any subgraph,
    including the search op's encoder and decoder) becomes a `DynamicQuantizeMatMul` with an int8
    weight and per-column scales (symmetric, zero point 0); the float bias stays separate.
    Everything else (attention's activation x activation products, layer norms) stays float.
    `src` is a path or a ModelProto (left unchanged); writes `dst` when given. Returns the number
    of MatMuls quantized.
    """
    import onnx
    from onnx import numpy_helper

    if isinstance(src, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(src)
    else:
        model = onnx.load(str(src))
    walked = list(_subgraphs(model.graph))
    graphs = [g for g, _ in walked]
    done: dict[tuple[int, str], tuple[str, str, str]] = {}
    count = 0
    for graph, scope in walked:
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        folded = []
        for node in graph.node:  # edited in place: the subgraph protos in `walked` stay the live ones
            if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.input[1] not in scope:
                continue
            owner = scope[node.input[1]]
            tensor = next(t for t in owner.initializer if t.name == node.input[1])
            w = numpy_helper.to_array(tensor)
            if w.ndim != 2 or w.dtype != np.float32 or w.size < min_elements:
                continue
            key = (id(owner), tensor.name)
            if key not in done:
                amax = np.abs(w).max(axis=0)
                scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
                q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
                names = (tensor.name + ".int8", tensor.name + ".scale", tensor.name + ".zp")
                owner.initializer.extend([numpy_helper.from_array(q, names[0]),
                                          numpy_helper.from_array(scale, names[1]),
                                          numpy_helper.from_array(np.zeros(w.shape[1], np.int8), names[2])])
                done[key] = names
            a_input = node.input[0]
            del node.input[:]
            node.input.extend([a_input, *done[key]])
            node.op_type, node.domain = "DynamicQuantizeMatMul", "com.microsoft"
            count += 1
            # fold a following bias Add (x @ W + b) into the op's bias input
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in {o.name for o in graph.output}:
                add = users[0]
                other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
                if other in scope:
                    bias = next(t for t in scope[other].initializer if t.name == other)
                    if list(bias.dims) == [w.shape[1]] and bias.data_type == onnx.TensorProto.FLOAT:
                        node.input.append(other)
                        out = add.output[0]
                        del node.output[:]
                        node.output.append(out)
                        folded.append(add)
        for add in folded:
            graph.node.remove(add)
    # drop float weights nobody reads any more
    used = {i for graph in graphs for node in graph.node for i in node.input}
    for graph in graphs:
        keep = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    for prop in model.metadata_props:
        if prop.key == "wdctl.precision":
            prop.value = "int8"
    if dst is not None:
        _save(model, dst)
    return count


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------

def check_search_settings(beams: int, max_length: int, vocab_size: int, max_positions: int,
                          source_length: int = 0) -> None:
    """Refuse impossible searches with a one-line InputError, before anything is allocated."""
    if not isinstance(beams, (int, np.integer)) or isinstance(beams, bool) or beams < 1:
        raise InputError(f"--beams must be a positive integer (got {beams!r})")
    if beams > MAX_BEAMS:
        raise InputError(f"--beams {beams} is more than {MAX_BEAMS}")
    if beams > vocab_size:
        raise InputError(f"--beams {beams} is more than the vocabulary ({vocab_size} tokens)")
    if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 2:
        raise InputError(f"max length must be an integer >= 2: the start token and one more (got {max_length!r})")
    if max_length > max_positions:
        raise InputError(f"max length {max_length} is beyond the model's position table ({max_positions})")
    if source_length > max_positions:
        raise InputError(f"input of {source_length} tokens is beyond the model's position table ({max_positions})")


class OnnxTranslator:
    """Runs a translator file in a plain `onnxruntime.InferenceSession` on token id lists.

    `generate(sources, beams=4, max_length=None, length_penalty=1.0)` returns, for each source id
    list, the target ids as transformers' `generate` returns them for a MarianMTModel with its
    OPUS-MT generation config (forced EOS, `<pad>` banned), without the leading decoder start
    token and without trailing padding. Empty source lists give empty outputs in their place.
    """

    def __init__(self, path, threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: translator file not found")
        if not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a positive integer (got {threads!r})")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a broken file is the user's input
            raise InputError(f"{path}: cannot load translator ({str(exc).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.vocab_size = int(meta["wdctl.vocab_size"])
            self.max_positions = int(meta["wdctl.max_positions"])
            self.pad_token_id = int(meta["wdctl.pad_token_id"])
            self.eos_token_id = int(meta["wdctl.eos_token_id"])
            self.precision = meta.get("wdctl.precision", "fp32")
        except KeyError as exc:
            raise InputError(f"{path}: not a wdctl translator (no {exc.args[0]} metadata)") from None
        self.path = path

    def check(self, beams: int, max_length: int, source_length: int = 0) -> None:
        check_search_settings(beams, max_length, self.vocab_size, self.max_positions, source_length)

    def generate(self, sources: Sequence[Sequence[int]], beams: int = 4, max_length: int | None = None,
                 length_penalty: float = 1.0, batch_size: int | None = None):
        """Translate id lists; see the class doc. Differences from the raw op that are undone here:

        - finished beam hypotheses come back without EOS: EOS is appended;
        - the op has no forced EOS at max_length: it runs to max_length - 1 and every hypothesis
          that reached that length gets EOS as its last token, which scores it exactly as
          transformers' forced EOS does (log-probability 0, length max_length - 1);
        - length penalty: both divide the summed log-probabilities by (generated length incl.
          EOS) ** length_penalty, so no correction is needed.
        `max_length` counts the decoder start token, as in transformers (None: the position table).
        `batch_size` splits the sources into session runs of that many (None: one run). Each
        run is one `session.run`; there is no search code on the Python side.
        With the int8 file, activations are quantized per tensor at run time, so a sentence's
        int8 output can depend on the other sentences of its batch (fp32 does not).
        """
        sources = [list(map(int, s)) for s in sources]
        longest = max((len(s) for s in sources), default=0)
        if max_length is None:
            max_length = self.max_positions
        self.check(beams, max_length, longest)
        for s in sources:
            if any(t < 0 or t >= self.vocab_size for t in s):
                raise InputError(f"token ids must be in [0, {self.vocab_size})")
        results: list[list[int]] = [[] for _ in sources]
        order = [i for i, s in enumerate(sources) if s]
        if not order:
            return results
        if max_length == 2:  # transformers forces EOS at the first and only step
            for i in order:
                results[i] = [self.eos_token_id]
            return results
        step = batch_size or len(order)
        for start in range(0, len(order), step):
            chunk = order[start:start + step]
            rows = self._run([sources[i] for i in chunk], beams, max_length, length_penalty)
            for i, row in zip(chunk, rows):
                results[i] = row
        return results

    def _run(self, sources, beams, max_length, length_penalty):
        width = max(len(s) for s in sources)
        ids = np.full((len(sources), width), self.pad_token_id, dtype=np.int32)
        mask = np.zeros((len(sources), width), dtype=np.int32)
        for r, s in enumerate(sources):
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        feeds = {
            "input_ids": ids, "attention_mask": mask,
            "max_length": np.array([max_length - 1], dtype=np.int32),
            "min_length": np.array([0], dtype=np.int32),
            "num_beams": np.array([beams], dtype=np.int32),
            "length_penalty": np.array([length_penalty], dtype=np.float32),
            "repetition_penalty": np.array([1.0], dtype=np.float32),
        }
        (sequences,) = self.session.run(["sequences"], feeds)
        rows = []
        for seq in sequences[:, 0, :].tolist():
            row = seq[1:]  # drop the decoder start token
            if self.eos_token_id in row:  # the op leaves EOS out; cut there anyway, should it not
                row = row[:row.index(self.eos_token_id)]
            while row and row[-1] == self.pad_token_id:  # <pad> is banned, so trailing pads are padding
                row.pop()
            rows.append(row + [self.eos_token_id])
        return rows
