"""The int8 translator's embeddings (`wdctl.export.translator_embeddings`): each distinct table
stored once, int8, in the main graph; the lookups and the tied output projection read it.

Synthetic weights (`test_translator._random_weights`), built in seconds; the int8 output is
checked against a numpy implementation of the same math with the dequantized tables.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from wdctl.export.translator import OnnxTranslator, build_translator, quantize_translator

SENTENCES = 12
MAX_LENGTH = 16


def _weights(d_enc: int, d_dec: int, tied: bool, vocab: int = 120):
    import test_translator as tt

    w = tt._random_weights(d_enc=d_enc, d_dec=d_dec, vocab=vocab)
    if tied:
        w = dataclasses.replace(w, encoder_embed=w.decoder_embed.copy())
    return w


def _tensors(path):
    """{name: (graph name, array)} of every initializer of every (sub)graph, and the graphs."""
    import onnx
    from onnx import numpy_helper

    from wdctl.export.translator import _subgraphs

    proto = onnx.load(str(path))
    graphs = [g for g, _ in _subgraphs(proto.graph)]
    tensors = {t.name: (g.name, numpy_helper.to_array(t)) for g in graphs for t in g.initializer}
    return proto, graphs, tensors


def _dequantized(table: np.ndarray) -> np.ndarray:
    amax = np.abs(table).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return (np.clip(np.rint(table / scale[:, None]), -127, 127) * scale[:, None]).astype(np.float32)


@pytest.mark.parametrize("early_stopping", [True, False])
def test_tied_embedding_is_stored_once_in_int8(tmp_path, early_stopping):
    w = _weights(32, 32, tied=True)
    vocab, d = w.decoder_embed.shape
    path = tmp_path / "fp32.onnx"
    build_translator(w, path, early_stopping=early_stopping)
    count = quantize_translator(path, tmp_path / "int8.onnx")
    proto, graphs, tensors = _tensors(tmp_path / "int8.onnx")
    tables = {n: a for n, (_, a) in tensors.items() if a.size >= vocab * d}
    # one (d, vocab) int8 table, in the main graph, for every lookup and output projection
    # (early_stopping=False: both branches' encoders and decoders)
    assert [(a.shape, a.dtype) for a in tables.values()] == [((d, vocab), np.int8)]
    (name,) = tables
    assert tensors[name][0] == proto.graph.name
    ops = [n for g in graphs for n in g.node]
    users = [n.op_type for n in ops if name in n.input]
    copies = 1 if early_stopping else 2
    assert sorted(users) == ["DynamicQuantizeMatMul"] * copies + ["Transpose"]
    rows = next(n.output[0] for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] == name)
    assert [n.op_type for n in ops if rows in n.input] == ["Gather"] * 2 * copies  # encoder and decoder lookups
    assert count == sum(1 for n in ops if n.op_type == "DynamicQuantizeMatMul")
    assert not any(a.dtype == np.float32 and a.ndim == 2 and vocab in a.shape and min(a.shape) > 1
                   for _, a in tensors.values())
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * path.stat().st_size


def test_int8_embeddings_match_numpy_with_dequantized_tables(tmp_path):
    """The stored table and scales are the per-token int8 quantization of the embedding (the
    lookups' scales times sqrt(d)); greedy output of the int8 file with only the embeddings
    quantized (min_elements keeps the layers' products float) agrees with the numpy reference
    on the dequantized table (not always exactly: the output projection quantizes its
    activations at run time)."""
    import test_translator as tt

    w = _weights(32, 32, tied=True)
    vocab, d = w.decoder_embed.shape
    path = tmp_path / "fp32.onnx"
    build_translator(w, path)
    quantize_translator(path, tmp_path / "emb8.onnx", min_elements=w.decoder_embed.size, reduce_range=False)
    _, _, tensors = _tensors(tmp_path / "emb8.onnx")
    q = next(a for _, a in tensors.values() if a.shape == (d, vocab))
    scale = next(a for _, a in tensors.values() if a.shape == (vocab,) and a.dtype == np.float32
                 and not np.array_equal(a, w.final_logits_bias))
    (lookup_scale,) = [a for _, a in tensors.values() if a.shape == (vocab, 1)]
    table = _dequantized(w.decoder_embed)
    np.testing.assert_allclose(q.T * scale[:, None], table, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(lookup_scale[:, 0], scale * np.float32(np.sqrt(d)), rtol=1e-6)
    ref_w = dataclasses.replace(w, encoder_embed=table, decoder_embed=table)
    sources = tt._sources(w.vocab_size, 5, SENTENCES)
    ref = [tt._np_greedy(ref_w, s, MAX_LENGTH) for s in sources]
    ours = OnnxTranslator(tmp_path / "emb8.onnx").generate(sources, beams=1, max_length=MAX_LENGTH, batch_size=1)
    assert sum(a == b for a, b in zip(ours, ref)) >= SENTENCES - 2


def test_untied_encoder_embedding_gets_its_own_int8_table(tmp_path):
    """A decoder narrower than the encoder: the encoder's table is stored (vocab, d_enc) int8
    with per-row scales (no product reads it), the decoder's (d_dec, vocab) for its lookup and
    output projection."""
    import test_translator as tt

    w = _weights(64, 32, tied=False, vocab=600)  # both tables larger than any layer's weight
    vocab = w.vocab_size
    path = tmp_path / "fp32.onnx"
    build_translator(w, path)
    quantize_translator(path, tmp_path / "int8.onnx")
    _, _, tensors = _tensors(tmp_path / "int8.onnx")
    int8 = sorted(a.shape for _, a in tensors.values() if a.dtype == np.int8 and a.ndim == 2 and vocab in a.shape)
    assert int8 == [(32, vocab), (vocab, 64)]
    assert not any(a.dtype == np.float32 and a.ndim == 2 and vocab in a.shape and min(a.shape) > 1
                   for _, a in tensors.values())
    sources = tt._sources(vocab, 3, SENTENCES)
    quantize_translator(path, tmp_path / "emb8.onnx", min_elements=vocab * 32 + 1, reduce_range=False)  # output projection float
    ref_w = dataclasses.replace(w, encoder_embed=_dequantized(w.encoder_embed),
                                decoder_embed=_dequantized(w.decoder_embed))
    ref = [tt._np_greedy(ref_w, s, MAX_LENGTH) for s in sources]
    ours = OnnxTranslator(tmp_path / "emb8.onnx").generate(sources, beams=1, max_length=MAX_LENGTH, batch_size=1)
    assert sum(a == b for a, b in zip(ours, ref)) >= SENTENCES - 2


def test_calibrated_int8_needs_a_range_for_every_product(tmp_path):
    """Fail closed: a file whose recorded activation ranges miss a product is refused, not
    quantized half per call, half fixed. With every range, no product scales per call."""
    import json

    from wdctl.export.calibration import METADATA_KEY
    from wdctl.export.translator_graph import _subgraphs

    model = build_translator(_weights(32, 32, tied=True))
    names = {t.name.rsplit("/", 1)[-1] for g, _ in _subgraphs(model.graph) for t in g.initializer
             if t.name.endswith(".w")}
    ranges = {name: [-1.0, 1.0] for name in names}
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(ranges))
    quantize_translator(model, tmp_path / "int8.onnx")
    _, graphs, _ = _tensors(tmp_path / "int8.onnx")
    ops = [n.op_type for g in graphs for n in g.node]
    assert "DynamicQuantizeMatMul" not in ops and ops.count("QuantizeLinear") == ops.count("MatMulIntegerToFloat") > 0
    del ranges["dec.0.fc2.w"]
    model.metadata_props[-1].value = json.dumps(ranges)
    with pytest.raises(ValueError, match="dec.0.fc2.w"):
        quantize_translator(model, tmp_path / "partial.onnx")
