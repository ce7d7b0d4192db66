"""The vocabulary shortlist inside translator.onnx (`translator_graph._shortlist_nodes`): the
search over a batch's shortlisted rows, mapped back to vocabulary ids; the full search when the
shortlist holds every id (`--no-shortlist`); the export that builds it in and reports it.

The model is test_translator's `copy` model (vocabulary 48, trained to copy its input), so its
outputs are mostly its source ids: a shortlist of each source id's own id keeps them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_translator import _copy_model, _sources
from wdctl.core.errors import InputError
from wdctl.export.translator import OnnxTranslator, build_translator, marian_weights, quantize_translator
from wdctl.export.translator_graph import set_shortlist_size
from wdctl.passes.shortlist import Shortlist

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def copy_files(tmp_path_factory):
    """(weights, {name: translator path}, sources): full, shortlist of every id, copy shortlist."""
    root = tmp_path_factory.mktemp("shortlist")
    w = marian_weights(_copy_model())
    vocab = w.vocab_size
    files = {"full": root / "full.onnx", "all": root / "all.onnx", "copy": root / "copy.onnx"}
    build_translator(w, files["full"])
    build_translator(w, files["all"], shortlist=Shortlist(vocab, (), {}), shortlist_size=vocab)
    build_translator(w, files["copy"], shortlist=Shortlist(vocab, (5,), {s: (s,) for s in range(vocab)}, 16))
    for name in list(files):
        files[name + "8"] = root / f"{name}8.onnx"
        quantize_translator(files[name], files[name + "8"])
    return w, files, _sources(vocab, 1)


def _expected_shortlist(w, shortlist: Shortlist, sources, size: int) -> list[int]:
    """The graph's rule, spelled out: specials first (start, EOS, pad), then the frequent ids,
    then candidates by summed weight (width - rank per source token), lower ids first among equals."""
    score = np.zeros(w.vocab_size)
    width = max((len(ts) for ts in shortlist.per_source.values()), default=1)
    for s in (t for src in sources for t in src):
        for rank, t in enumerate(shortlist.per_source.get(s, ())):
            score[t] += width - rank
    for rank, t in enumerate(shortlist.frequent):
        score[t] = 1e6 + len(shortlist.frequent) - rank
    specials = list(dict.fromkeys([w.decoder_start_token_id, w.eos_token_id, w.pad_token_id]))
    for rank, t in enumerate(specials):
        score[t] = 1e7 * (len(specials) - rank + 1)
    return sorted(range(w.vocab_size), key=lambda t: (-score[t], t))[:size]


@pytest.mark.parametrize("precision", ["", "8"])
def test_a_shortlist_of_every_id_is_the_full_search(copy_files, precision):
    """Positions are a permutation of the vocabulary: the same lines as without a shortlist, fp32
    and int8 (the product runs on the int8 table's rows, dequantized once per batch)."""
    _, files, sources = copy_files
    for beams in (1, 4):
        want = OnnxTranslator(files["full" + precision]).generate(sources, beams=beams, max_length=MAX_LENGTH)
        got = OnnxTranslator(files["all" + precision]).generate(sources, beams=beams, max_length=MAX_LENGTH)
        assert got == want


def test_the_search_emits_only_its_batch_shortlist(copy_files):
    w, files, sources = copy_files
    shortlist = Shortlist(w.vocab_size, (5,), {s: (s,) for s in range(w.vocab_size)}, 16)
    translator = OnnxTranslator(files["copy"])
    assert translator.shortlist_size == 16
    full = OnnxTranslator(files["full"])
    same = 0
    for src in sources:
        allowed = set(_expected_shortlist(w, shortlist, [src], 16))
        assert len(allowed) == 16 and {w.eos_token_id, w.pad_token_id, 5} <= allowed
        for beams in (1, 4):
            (row,) = translator.generate([src], beams=beams, max_length=MAX_LENGTH)
            assert set(row) <= allowed, (src, row)
            same += row == full.generate([src], beams=beams, max_length=MAX_LENGTH)[0]
    # the copy model mostly copies, so its own ids are what it needs: most lines are unchanged
    assert same >= len(sources)


def test_without_shortlist_the_same_file_runs_the_full_search(copy_files):
    _, files, sources = copy_files
    want = OnnxTranslator(files["full8"]).generate(sources, beams=4, max_length=MAX_LENGTH)
    translator = OnnxTranslator(files["copy8"], shortlist=False)
    assert translator.shortlist_size == translator.vocab_size
    assert translator.generate(sources, beams=4, max_length=MAX_LENGTH) == want


def test_set_shortlist_size_touches_every_size_dependent_value(copy_files, tmp_path):
    """A file resized after it was built (as `--no-shortlist` resizes it to the vocabulary)
    searches exactly the larger shortlist."""
    import onnx

    w, files, sources = copy_files
    model = onnx.load(str(files["copy"]))
    set_shortlist_size(model, 24)
    onnx.save(model, tmp_path / "copy24.onnx")
    translator = OnnxTranslator(tmp_path / "copy24.onnx")
    assert translator.shortlist_size == 24
    shortlist = Shortlist(w.vocab_size, (5,), {s: (s,) for s in range(w.vocab_size)}, 16)
    for src in sources[:4]:
        (row,) = translator.generate([src], beams=4, max_length=MAX_LENGTH)
        assert set(row) <= set(_expected_shortlist(w, shortlist, [src], 24))


def test_shortlist_sizes_are_checked_when_the_file_is_built(copy_files):
    w, _, _ = copy_files
    shortlist = Shortlist(w.vocab_size, (5, 6, 7), {})
    for size in (12, 17, w.vocab_size + 8):  # below the pinned ids + 8, not a multiple of 8, beyond the vocabulary
        with pytest.raises(InputError, match="shortlist size"):
            build_translator(w, None, shortlist=shortlist, shortlist_size=size)
    with pytest.raises(InputError, match="vocabulary of 99"):
        build_translator(w, None, shortlist=Shortlist(99, (), {}), shortlist_size=16)


def test_shortlist_file_keeps_its_size(tmp_path):
    sl = Shortlist(48, (5,), {3: (4, 6)}, 16)
    sl.save(tmp_path / "s.json")
    assert Shortlist.load(tmp_path / "s.json") == sl
    data = json.loads((tmp_path / "s.json").read_text())
    data["size"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="bad.json: size 99"):
        Shortlist.load(tmp_path / "bad.json")


def test_export_names_a_shortlist_that_does_not_fit_the_model(tmp_path, tiny_teacher_dir, cli):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_teacher_dir, model)
    Shortlist(99, (), {}).save(model / "shortlist.json")
    code, _, err = cli("export", model, "--out", tmp_path / "pkg")
    assert code == 2 and "shortlist.json: shortlist for a vocabulary of 99" in err and "--no-shortlist" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "pkg").exists()


def test_the_left_out_mass_is_estimated_from_the_rows_outside_the_shortlist(copy_files):
    """The decoder's rest slot (`translator_graph._rest_logit`) reads two per-batch values; the
    graph must compute them from exactly the live rows outside the batch's shortlist (their mean,
    against numpy), and the estimate must track the true log-mass of those rows."""
    from onnx import TensorProto, helper, numpy_helper

    import onnxruntime as ort
    from wdctl.export.translator_graph import _final_bias

    w, _, sources = copy_files
    shortlist = Shortlist(w.vocab_size, (5,), {s: (s,) for s in range(w.vocab_size)}, 16)
    model = build_translator(w, None, shortlist=shortlist)
    names = ("shortlist", "rest_lin", "rest_const")
    model.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.INT64 if n == "shortlist" else
                                                            TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    src = np.array([sources[0]], np.int32)
    feeds = {"input_ids": src, "attention_mask": np.ones_like(src), "max_length": np.array([8], np.int32),
             "min_length": np.array([0], np.int32), "num_beams": np.array([1], np.int32),
             "length_penalty": np.array([1.0], np.float32), "repetition_penalty": np.array([1.0], np.float32)}
    kept, lin, const = session.run(list(names), feeds)
    decoder = next(a.g for n in model.graph.node if n.op_type == "BeamSearch" for a in n.attribute if a.name == "decoder")
    quad = next(numpy_helper.to_array(t) for t in decoder.initializer if t.name.endswith("rest_half_cov"))
    bias = _final_bias(w).astype(np.float64)
    rest = np.setdiff1d(np.flatnonzero(bias > -1e8), kept)
    assert 0 < len(rest) < w.vocab_size
    rows = np.concatenate([w.decoder_embed.astype(np.float64), bias[:, None]], axis=1)
    pinned = [w.decoder_start_token_id, w.eos_token_id, w.pad_token_id, 5]
    cov = np.cov(np.delete(rows, pinned, axis=0)[bias[np.setdiff1d(range(w.vocab_size), pinned)] > -1e8],
                 rowvar=False, bias=True)  # fixed at export: every live row a shortlist may leave out
    mean, d = rows[rest].mean(0), w.d_dec
    np.testing.assert_allclose(quad, cov[:d, :d] / 2, atol=1e-5, rtol=1e-3)
    np.testing.assert_allclose(lin, mean[:d] + cov[:d, d], atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(const, [np.log(len(rest)) + mean[d] + cov[d, d] / 2], atol=1e-4, rtol=1e-3)
    h = np.random.default_rng(0).standard_normal((64, d))  # LayerNorm-like states
    estimate = np.einsum("rd,de,re->r", h, quad, h) + h @ lin + const
    logits = h @ w.decoder_embed[rest].T.astype(np.float64) + bias[rest]
    true = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    # 0.010 nats here; without the variance term 0.16
    assert np.abs(estimate - true).mean() < 0.05, (estimate[:4], true[:4])
