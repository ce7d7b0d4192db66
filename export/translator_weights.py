"""The weights of a post-LN Marian transformer as plain numpy arrays: what the in-graph
translator (`wdctl.export.translator_graph`) is built from. `marian_weights(model)` extracts them
from a transformers `MarianMTModel`; the decoder may be narrower than the encoder (d_dec != d_enc).

Note: the narrow-decoder student class (`passes/narrow_marian.py`, the paper's TINY) is accepted
by `marian_weights` (same modules; decoder embeddings scaled by sqrt(d_dec)), but only checked
ad hoc, not by a test: when `wdctl compress` exports TINY students, the export's validation of the
translator against PyTorch is what guards it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdctl.core.errors import InputError

_F32 = np.float32
ACTIVATIONS = ("swish", "silu", "relu", "gelu")

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
    # wdctl_narrow_marian (passes/narrow_marian.py, the paper's TINY): Marian's modules with a
    # narrower decoder, K/V projections d_enc -> d_dec; the same extraction applies
    if getattr(cfg, "model_type", None) not in ("marian", "wdctl_narrow_marian"):
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


def check_weights(w: MarianWeights) -> None:
    for name, heads, d in (("encoder", w.encoder_heads, w.d_enc), ("decoder", w.decoder_heads, w.d_dec)):
        if heads < 1 or d % heads:
            raise InputError(f"{name} width {d} is not divisible by {heads} heads")
    if w.decoder_positions.shape[1] != w.d_dec or w.encoder_positions.shape[1] != w.d_enc:
        raise InputError("position tables do not match the model widths")
    if w.activation not in ACTIVATIONS:
        raise InputError(f"activation '{w.activation}' is not supported (supported: {', '.join(ACTIVATIONS)})")
    if not w.decoder_layers or not w.encoder_layers:
        raise InputError("the translator graph needs at least one encoder and one decoder layer")
    for layer in w.decoder_layers:
        if layer.cross_attn.k_w.shape != (w.d_enc, w.d_dec) or layer.cross_attn.v_w.shape != (w.d_enc, w.d_dec):
            raise InputError("cross-attention K/V projections must map d_enc -> d_dec")
