"""The in-graph translator (`wdctl.export.translator`): one ONNX file, the search inside it.

Two tiny models built here, in seconds:
- `peaky`: random weights with a large init scale and a raised EOS bias, so the logits are far
  from ties; outputs either stop at once or run to the length limit (forced EOS exercised);
- `copy`: the same shape trained for 150 steps to copy its input, so outputs have many different
  lengths and beam search often differs from greedy search.
Both are compared token for token with PyTorch `generate` (early_stopping=True, as wdctl's
`translate_torch` calls it), batch 1 and batched. A third, synthetic model has a decoder narrower
than its encoder and is checked against a numpy implementation of the same math.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wdctl.core.errors import InputError
from wdctl.export.translator import (
    AttentionWeights,
    DecoderLayerWeights,
    EncoderLayerWeights,
    FeedForwardWeights,
    LayerNormWeights,
    MarianWeights,
    OnnxTranslator,
    build_translator,
    check_search_settings,
    marian_weights,
    quantize_translator,
)
from wdctl.passes.batching import output_limit
from wdctl.passes.translate import generate_limited

SENTENCES = 16
MAX_LENGTH = 16


def _sources(vocab: int, seed: int, n: int = SENTENCES) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(2, vocab - 1, int(rng.integers(2, 10)))] + [0] for _ in range(n)]


def _peaky_model():
    from transformers import MarianMTModel

    from wdctl.passes.marian import build_teacher

    base = build_teacher("tiny", 400)
    config = base.config
    config.init_std = 0.3
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.generation_config = base.generation_config
    with torch.no_grad():
        model.final_logits_bias[0, config.eos_token_id] = 10.0
        model.model.shared.weight[config.pad_token_id].zero_()
    return model


def _copy_model():
    from wdctl.passes.marian import build_teacher

    torch.manual_seed(0)
    model = build_teacher("tiny", 48)
    pad = model.config.pad_token_id
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        lengths = torch.randint(2, 10, (32,), generator=gen).tolist()
        src = torch.full((32, 11), pad)
        labels = torch.full((32, 11), -100)
        for i, n in enumerate(lengths):
            src[i, :n] = labels[i, :n] = torch.randint(2, 47, (n,), generator=gen)
            src[i, n] = labels[i, n] = 0
        loss = model(input_ids=src, attention_mask=(src != pad).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (torch model, fp32 translator path, sources)."""
    root = tmp_path_factory.mktemp("translator")
    found = {}
    for name, make, seed in (("peaky", _peaky_model, 1), ("copy", _copy_model, 2)):
        model = make()
        path = root / f"{name}.onnx"
        build_translator(marian_weights(model), path)
        found[name] = (model, path, _sources(model.config.vocab_size, seed))
    return found


_SESSIONS: dict = {}


def _translator(path) -> OnnxTranslator:
    if str(path) not in _SESSIONS:
        _SESSIONS[str(path)] = OnnxTranslator(path, threads=1)
    return _SESSIONS[str(path)]


def _reference(model, sources, beams, batch, max_length=MAX_LENGTH, length_penalty=1.0, **generate_kwargs):
    pad = model.config.pad_token_id
    rows = []
    for start in range(0, len(sources), batch):
        chunk = sources[start:start + batch]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
        extra = {"early_stopping": True, "length_penalty": length_penalty} if beams > 1 else {}
        with torch.inference_mode():  # each sentence limited by its own source, as translate_torch does
            out = generate_limited(model, ids, (ids != pad).long(), beams, max_length, **extra, **generate_kwargs)
        for row in out.tolist():
            row = row[1:]
            while row and row[-1] == pad:
                row.pop()
            rows.append(row)
    return rows


def _ours(path, sources, beams, batch, max_length=MAX_LENGTH, length_penalty=1.0):
    return _translator(path).generate(sources, beams=beams, max_length=max_length, length_penalty=length_penalty,
                                      batch_size=batch)


def _assert_same(ref, ours):
    bad = [i for i, (a, b) in enumerate(zip(ref, ours)) if a != b]
    assert len(ref) == len(ours) == SENTENCES
    assert not bad, f"{len(bad)} sentences differ, first {bad[0]}: {ref[bad[0]]} vs {ours[bad[0]]}"


@pytest.mark.parametrize("name", ["peaky", "copy"])
@pytest.mark.parametrize("beams,batch", [(1, 1), (1, SENTENCES), (4, 1), (4, SENTENCES)])
def test_translator_matches_pytorch_generate(models, name, beams, batch):
    model, path, sources = models[name]
    _assert_same(_reference(model, sources, beams, batch), _ours(path, sources, beams, batch))


@pytest.mark.parametrize("beams,length_penalty", [(4, 0.6), (3, 2.0), (2, -0.5)])
def test_length_penalty_matches_pytorch_generate(models, beams, length_penalty):
    model, path, sources = models["copy"]
    _assert_same(_reference(model, sources, beams, 8, length_penalty=length_penalty),
                 _ours(path, sources, beams, 8, length_penalty=length_penalty))


def test_renormalized_logits_match_pytorch_generate(models, tmp_path):
    """OPUS-MT hub models set generation_config.renormalize_logits: <pad> leaves the softmax."""
    model, _, sources = models["copy"]
    weights = marian_weights(model)
    weights.renormalize_logits = True
    build_translator(weights, tmp_path / "renorm.onnx")
    ours = _ours(tmp_path / "renorm.onnx", sources, 4, 8)
    assert ours == _reference(model, sources, 4, 8, renormalize_logits=True)


def test_outputs_exercise_the_search(models):
    """The comparisons above cover early stops, forced EOS at the limit and beam != greedy."""
    model, path, sources = models["copy"]
    greedy, beam = _ours(path, sources, 1, SENTENCES), _ours(path, sources, 4, SENTENCES)
    assert len({len(r) for r in beam}) >= 4
    for row in greedy + beam:
        assert row and row[-1] == 0 and model.config.pad_token_id not in row and len(row) <= MAX_LENGTH - 1
    # the copy model learns its task well enough that its beams may all agree with greedy (they do
    # when it is trained on an AVX2 CPU); the peaky model's never do
    peaky = _ours(models["peaky"][1], models["peaky"][2], 4, SENTENCES)
    assert peaky != _ours(models["peaky"][1], models["peaky"][2], 1, SENTENCES)
    assert {len(r) for r in peaky} >= {1, MAX_LENGTH - 1}  # stopped at once, and cut by the forced EOS


@pytest.mark.parametrize("max_length", [2, 3])
def test_short_limits_match_pytorch_generate(models, max_length):
    model, path, sources = models["copy"]
    for beams in (1, 4):
        assert _ours(path, sources, beams, 4, max_length) == _reference(model, sources, beams, 4, max_length)


def test_plain_inference_session_runs_the_whole_search(models):
    """The file alone, in a bare InferenceSession, returns the token ids: no Python-side search."""
    import onnx
    import onnxruntime as ort

    model, path, sources = models["copy"]
    proto = onnx.load(str(path))
    # the encoder runs in the main graph, once per sentence; one BeamSearch node, last, serves
    # greedy (1 beam, early_stopping=1) and beams
    *encoder_nodes, search = proto.graph.node
    assert [n.op_type for n in encoder_nodes].count("MultiHeadAttention") == 2  # the 2 encoder layers
    assert "BeamSearch" not in [n.op_type for n in encoder_nodes]
    attrs = {a.name: a for a in search.attribute}
    assert search.op_type == "BeamSearch" and attrs["model_type"].i == 1 and attrs["early_stopping"].i == 1
    decoder, placeholder = attrs["decoder"].g, attrs["encoder"].g
    assert decoder.input[0].type.tensor_type.shape.dim[1].dim_value == 1  # the trap: fixed 1, not symbolic
    ops = [n.op_type for n in decoder.node]
    # self- and cross-attention fused; the cross-attention reads the encoder's K/V from the main
    # graph (one copy per sentence, not per beam)
    assert ops.count("MultiHeadAttention") == 4 and ops.count("LayerNormalization") == 6
    # (9 of them give each row its own output limit: `_row_length_limit`)
    assert "SkipLayerNormalization" not in ops and len(ops) < 51 + 9
    outer = {o for n in encoder_nodes for o in n.output} | {t.name for t in proto.graph.initializer}
    read_from_outside = {i for n in decoder.node for i in n.input} - {o for n in decoder.node for o in n.output} \
        - {t.name for t in decoder.initializer} - {i.name for i in decoder.input} - {""}
    # ... and the position table, which the file holds once for the encoder and the decoder
    assert read_from_outside == {"cross_key_0", "cross_value_0", "cross_key_1", "cross_value_1", "cross_mask",
                                 "cross_q_shape", "enc/enc.positions"} and read_from_outside <= outer
    assert [o.name for o in placeholder.output] == ["present_key_cross_0", "present_value_cross_0",
                                                    "present_key_cross_1", "present_value_cross_1"]
    assert "MatMul" not in [n.op_type for n in placeholder.node]  # only zeros the op requires
    # no initializer or node output is defined twice anywhere in the file (nested graphs included)
    from wdctl.export.translator import _subgraphs

    defined = [name for g, _ in _subgraphs(proto.graph)
               for name in [*(t.name for t in g.initializer), *(o for n in g.node for o in n.output)]]
    assert len(defined) == len(set(defined))

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    width = max(len(s) for s in sources)
    ids = np.full((len(sources), width), model.config.pad_token_id, dtype=np.int32)
    for i, s in enumerate(sources):
        ids[i, :len(s)] = s
    feeds = {"input_ids": ids, "attention_mask": (ids != model.config.pad_token_id).astype(np.int32),
             "max_length": np.array([MAX_LENGTH], np.int32), "min_length": np.array([0], np.int32),
             "num_beams": np.array([4], np.int32), "length_penalty": np.array([1.0], np.float32),
             "repetition_penalty": np.array([1.0], np.float32)}
    (sequences,) = session.run(None, feeds)
    assert sequences.shape == (len(sources), 1, MAX_LENGTH) and sequences.dtype == np.int32
    assert (sequences[:, 0, 0] == model.config.decoder_start_token_id).all()
    # the raw op's rows are transformers' rows up to EOS (which the op leaves out) and the cut
    raw = [[t for t in row[1:] if t != model.config.pad_token_id] for row in sequences[:, 0].tolist()]
    ref = _reference(model, sources, 4, SENTENCES, max_length=MAX_LENGTH + 1)
    assert [r[:-1] for r in ref if len(r) < MAX_LENGTH] == [r for r, f in zip(raw, ref) if len(f) < MAX_LENGTH]


def test_onnxruntime_keeps_the_fast_layer_norm(models, tmp_path):
    """onnxruntime can fuse Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel
    is a scalar loop (3-6x slower from 4 rows on); the graph's Sum + LayerNormalization must
    survive its optimizer, in the encoder and in the decoder step the search runs."""
    import onnx
    import onnxruntime as ort

    from wdctl.export.session import session_options
    from wdctl.export.translator import _subgraphs

    _, path, _ = models["copy"]
    opts = session_options(1)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graphs = {g.name: [n.op_type for n in g.node]
              for g, _ in _subgraphs(onnx.load(opts.optimized_model_filepath).graph)}
    assert graphs["wdctl_translator"].count("LayerNormalization") == 4  # 2 encoder layers x 2
    assert graphs["marian_decoder"].count("LayerNormalization") == 6  # 2 decoder layers x 3
    assert not any("SkipLayerNormalization" in ops for ops in graphs.values())


def test_empty_inputs_keep_their_place(models):
    model, path, sources = models["copy"]
    tr = _translator(path)
    got = tr.generate([[], sources[0], [], sources[1], []], beams=4, max_length=MAX_LENGTH)
    assert got[0] == got[2] == got[4] == []
    assert got[1:4:2] == _reference(model, sources[:2], 4, 1)
    assert tr.generate([], beams=4) == []


def test_refusals_before_anything_is_allocated(models, monkeypatch):
    model, path, sources = models["copy"]  # vocabulary 48, position table 512
    tr = _translator(path)

    def boom(*args, **kwargs):
        raise AssertionError("session.run reached")

    monkeypatch.setattr(tr, "session", type("S", (), {"run": boom})())
    cases = [
        (dict(beams=65), "more than 64"),
        (dict(beams=100000), "more than 64"),
        (dict(beams=49), "vocabulary"),
        (dict(beams=0), "positive"),
        (dict(beams=4, max_length=1), ">= 2"),
        (dict(beams=4, max_length=513), "position table"),
        (dict(beams=1, max_length=100000), "position table"),
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message) as info:
            tr.generate(sources[:2], **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="position table"):
        tr.generate([[5] * 600 + [0]], beams=2, max_length=20)
    with pytest.raises(InputError, match="token ids"):
        tr.generate([[5, 48, 0]], beams=2, max_length=20)
    with pytest.raises(InputError, match="vocabulary"):
        check_search_settings(beams=11, max_length=20, vocab_size=10, max_positions=512)
    check_search_settings(beams=48, max_length=512, vocab_size=48, max_positions=512)
    with pytest.raises(InputError, match="not found"):
        OnnxTranslator(path.parent / "missing.onnx")


def test_int8_quantizes_only_weight_matmuls_in_every_subgraph(models, tmp_path):
    import onnx

    from wdctl.export.translator import _subgraphs

    model, path, sources = models["copy"]
    count = quantize_translator(path, tmp_path / "int8.onnx")
    proto = onnx.load(str(tmp_path / "int8.onnx"))
    graphs = [g for g, _ in _subgraphs(proto.graph)]
    ops = [n.op_type for g in graphs for n in g.node]
    # encoder 2 layers x 4 + cross K/V 1; decoder 2 layers x 6 + output layer 1
    assert count == 9 + 13 and ops.count("DynamicQuantizeMatMul") == count
    assert "MatMul" not in ops and ops.count("MultiHeadAttention") == 2 + 4  # attention stays float
    # bias adds folded into the quantized MatMuls (position adds stay, and the decoder's 2 integer
    # adds of the per-row output limit)
    assert ops.count("Add") == 3 + 2
    assert (tmp_path / "int8.onnx").stat().st_size < 0.7 * path.stat().st_size
    tr = OnnxTranslator(tmp_path / "int8.onnx")
    assert tr.precision == "int8"
    for beams in (1, 4):
        ours = tr.generate(sources, beams=beams, max_length=MAX_LENGTH)
        ref = _translator(path).generate(sources, beams=beams, max_length=MAX_LENGTH)
        assert sum(a == b for a, b in zip(ours, ref)) >= SENTENCES - 3


@pytest.mark.parametrize("reduce_range,limit", [(True, 63), (False, 127)])
def test_int8_weight_range_follows_reduce_range(models, tmp_path, reduce_range, limit):
    """CPUs without VNNI saturate u8 x s8 pairs at full range: reduce_range keeps weights in ±63."""
    import onnx
    from onnx import numpy_helper

    from wdctl.export.translator import _subgraphs

    _, path, _ = models["copy"]
    quantize_translator(path, tmp_path / "q.onnx", reduce_range=reduce_range)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    weights = [numpy_helper.to_array(t) for g, _ in _subgraphs(proto.graph) for t in g.initializer
               if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == limit
    assert {p.key: p.value for p in proto.metadata_props}["wdctl.int8_weight_range"] == str(limit)


def test_early_stopping_false_graph(models, tmp_path):
    """transformers' own default: greedy stays exact (a one-beam early-stopping search picked by an
    If), beam search runs one sentence at a time so rows do not depend on their batch, and the
    int8 pass reaches the weights of both copies of the subgraphs."""
    model, _, sources = models["copy"]
    path = tmp_path / "es0.onnx"
    build_translator(marian_weights(model), path, early_stopping=False)
    tr = OnnxTranslator(path)
    assert tr.generate(sources, beams=1, max_length=MAX_LENGTH) == _reference(model, sources, 1, SENTENCES)
    assert tr.generate(sources, beams=4, max_length=MAX_LENGTH) == tr.generate(
        sources, beams=4, max_length=MAX_LENGTH, batch_size=1)
    assert quantize_translator(path, tmp_path / "es0-int8.onnx") == 2 * (9 + 13)
    assert len(OnnxTranslator(tmp_path / "es0-int8.onnx").generate(sources[:4], beams=4, max_length=8)) == 4


# --------------------------------------------------------------------------------------------
# A decoder narrower than the encoder, against numpy
# --------------------------------------------------------------------------------------------

def _sinusoids(n: int, d: int) -> np.ndarray:
    pos = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(d) // 2) / d)[None]
    table = np.zeros((n, d), np.float32)
    half = d // 2 if d % 2 == 0 else d // 2 + 1
    table[:, :half] = np.sin(pos[:, 0::2])
    table[:, half:] = np.cos(pos[:, 1::2])
    return table


def _random_weights(d_enc=64, d_dec=32, enc_layers=2, dec_layers=1, vocab=120, seed=0) -> MarianWeights:
    rng = np.random.default_rng(seed)

    def m(*shape, std=0.3):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def att(d_q, d_kv):
        return AttentionWeights(m(d_q, d_q), m(d_q), m(d_kv, d_q), m(d_q), m(d_kv, d_q), m(d_q), m(d_q, d_q), m(d_q))

    def ln(d, gain=1.0):
        return LayerNormWeights((1 + m(d, std=0.1)) * gain, m(d, std=0.1))

    def ffn(d):
        return FeedForwardWeights(m(d, 2 * d), m(2 * d), m(2 * d, d), m(d))

    enc_embed, dec_embed = m(vocab, d_enc), m(vocab, d_dec)
    enc_embed[vocab - 1] = dec_embed[vocab - 1] = 0
    bias = np.zeros(vocab, np.float32)
    bias[0] = 11.0  # some outputs stop early, others run into the forced EOS
    dec_layers_w = [DecoderLayerWeights(att(d_dec, d_dec), ln(d_dec), att(d_dec, d_enc), ln(d_dec), ffn(d_dec),
                                        ln(d_dec, 3.0 if i == dec_layers - 1 else 1.0)) for i in range(dec_layers)]
    return MarianWeights(
        encoder_embed=enc_embed, decoder_embed=dec_embed, final_logits_bias=bias,
        encoder_positions=_sinusoids(64, d_enc), decoder_positions=_sinusoids(64, d_dec),
        encoder_layers=[EncoderLayerWeights(att(d_enc, d_enc), ln(d_enc), ffn(d_enc), ln(d_enc))
                        for _ in range(enc_layers)],
        decoder_layers=dec_layers_w, encoder_heads=4, decoder_heads=2,
        pad_token_id=vocab - 1, eos_token_id=0, decoder_start_token_id=vocab - 1)


def _np_ln(x, ln, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * ln.gamma + ln.beta


def _np_attention(xq, xkv, a: AttentionWeights, heads, key_mask=None, causal=False):
    q, k, v = xq @ a.q_w + a.q_b, xkv @ a.k_w + a.k_b, xkv @ a.v_w + a.v_b
    t, s, d = q.shape[0], k.shape[0], q.shape[1]
    hd = d // heads
    q, k, v = (x.reshape(x.shape[0], heads, hd).transpose(1, 0, 2) for x in (q, k, v))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
    if key_mask is not None:
        scores = np.where(key_mask[None, None, :] > 0, scores, -1e9)
    if causal:
        scores = np.where(np.tril(np.ones((t, s), bool))[None], scores, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(1, 0, 2).reshape(t, d) @ a.o_w + a.o_b


def _np_ffn(x, f: FeedForwardWeights):
    h = x @ f.fc1_w + f.fc1_b
    return (h / (1 + np.exp(-h))) @ f.fc2_w + f.fc2_b


def _np_greedy(w: MarianWeights, src: list[int], max_length: int) -> list[int]:
    """transformers' greedy generate for this math: <pad> banned, forced EOS at limit - 1, where the
    limit is min(max_length, `output_limit` of the source), as `generate_limited` sets it."""
    max_length = min(max_length, output_limit(len(src)))
    eps = w.layer_norm_eps
    h = w.encoder_embed[src] * math.sqrt(w.d_enc) + w.encoder_positions[:len(src)]
    for layer in w.encoder_layers:
        h = _np_ln(h + _np_attention(h, h, layer.self_attn, w.encoder_heads), layer.self_attn_ln, eps)
        h = _np_ln(h + _np_ffn(h, layer.ffn), layer.final_ln, eps)
    enc = h
    seq = [w.decoder_start_token_id]
    while len(seq) < max_length:
        if len(seq) == max_length - 1:
            seq.append(w.eos_token_id)
            break
        h = w.decoder_embed[seq] * math.sqrt(w.d_dec) + w.decoder_positions[:len(seq)]
        for layer in w.decoder_layers:
            h = _np_ln(h + _np_attention(h, h, layer.self_attn, w.decoder_heads, causal=True), layer.self_attn_ln, eps)
            h = _np_ln(h + _np_attention(h, enc, layer.cross_attn, w.decoder_heads), layer.cross_attn_ln, eps)
            h = _np_ln(h + _np_ffn(h, layer.ffn), layer.final_ln, eps)
        logits = h[-1] @ w.decoder_embed.T + w.final_logits_bias
        logits[w.pad_token_id] = -np.inf
        seq.append(int(np.argmax(logits)))
        if seq[-1] == w.eos_token_id:
            break
    return seq[1:]


def test_numpy_reference_is_pytorch_marian(models):
    """The numpy reference below reproduces MarianMTModel greedy generate (equal widths)."""
    model, _, sources = models["copy"]
    w = marian_weights(model)
    assert [_np_greedy(w, s, MAX_LENGTH) for s in sources] == _reference(model, sources, 1, 1)


def test_narrow_decoder_matches_numpy(tmp_path):
    w = _random_weights()
    assert (w.d_enc, w.d_dec) == (64, 32)
    path = tmp_path / "narrow.onnx"
    build_translator(w, path)
    sources = _sources(w.vocab_size, 3)
    tr = OnnxTranslator(path)
    ref = [_np_greedy(w, s, MAX_LENGTH) for s in sources]
    assert len({len(r) for r in ref}) >= 3
    assert tr.generate(sources, beams=1, max_length=MAX_LENGTH, batch_size=1) == ref
    assert tr.generate(sources, beams=1, max_length=MAX_LENGTH) == ref  # batched, padded
    beams = tr.generate(sources, beams=4, max_length=MAX_LENGTH)
    assert all(r and r[-1] == 0 and w.pad_token_id not in r for r in beams)
    quantize_translator(path, tmp_path / "narrow8.onnx")
    assert len(OnnxTranslator(tmp_path / "narrow8.onnx").generate(sources, beams=4, max_length=MAX_LENGTH)) == SENTENCES


def test_narrow_decoder_student_translates_like_pytorch(tmp_path):
    """The paper's TINY (wdctl's NarrowMarianMTModel, d_dec < d_enc) goes through `marian_weights`."""
    import test_narrow_marian as narrow

    from wdctl.export.translator import export_translator

    _, student = narrow.tiny_student()
    student.eval()
    assert student.config.decoder_d_model < student.config.d_model
    g = torch.Generator().manual_seed(3)
    sources = [torch.randint(2, narrow.VOCAB - 1, (n,), generator=g).tolist() + [0] for n in (3, 5, 7, 4)]
    translator = OnnxTranslator(export_translator(student, tmp_path / "t.onnx"))
    for beams in (1, 4):
        for s in sources:
            ids = torch.tensor([s])
            with torch.inference_mode():
                ref = student.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=beams,
                                       max_length=12, early_stopping=True)[0].tolist()[1:]
            while ref and ref[-1] == student.config.pad_token_id:
                ref.pop()
            assert translator.generate([s], beams=beams, max_length=12)[0] == ref, (beams, s)


NODE_EXAMPLE = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "node"


@pytest.mark.skipif(__import__("shutil").which("node") is None, reason="node is not installed")
@pytest.mark.skipif(not (NODE_EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(),
                    reason="onnxruntime-node is not installed (ONNXRUNTIME_NODE_INSTALL=skip npm install "
                           "--prefix examples/node)")
@pytest.mark.parametrize("beams", [1, 4])
def test_translator_runs_in_node(models, beams):
    """The same translator file in onnxruntime-node (examples/node/translate.mjs) returns the same
    raw rows as a plain Python InferenceSession: no search code on either side."""
    import json
    import subprocess

    model, path, sources = models["copy"]
    pad = model.config.pad_token_id
    job = {"model": str(path), "sources": sources, "beams": beams, "max_length": MAX_LENGTH, "pad_token_id": pad}
    done = subprocess.run(["node", str(NODE_EXAMPLE / "translate.mjs")], input=json.dumps(job), text=True,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    node_rows = json.loads(done.stdout)["sequences"]
    sequences = _translator(path).raw_sequences(sources, beams, MAX_LENGTH)
    assert node_rows == sequences[:, 0, :].tolist()
    assert len({tuple(r) for r in node_rows}) > 1  # real, different translations, not one repeated row
