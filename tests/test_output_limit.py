"""Each sentence's output length limit comes from its own source (`passes.batching.output_limit`),
everywhere: PyTorch (`translate_torch`, `generate_limited`), the in-graph translator (fp32 and
int8), and so distillation and the bench, which decode through them. The same sentence gives the
same line at any batch size and in any batch order.

The tiny teacher (`tiny_teacher_dir`, 120 training steps) loops on every sentence here: each
output runs to its own limit, which is what a limit is for, so these sentences are the ones
whose lines used to depend on the longest source of their batch.
"""

from __future__ import annotations

import random

import pytest
import torch

from wdctl.passes.batching import output_limit

BEAMS = 4


@pytest.fixture(scope="module")
def setup(tiny_teacher_dir, bible_pairs, tmp_path_factory):
    """(model, tokenizer, sentences, fp32 package dir, int8 package dir): the packages hold only
    the tokenizer and `translator.onnx`, all that `PackageTranslator` reads."""
    from wdctl.export.calibration import activation_ranges
    from wdctl.export.onnx_export import SAMPLE_SENTENCES
    from wdctl.export.translator import export_translator
    from wdctl.passes.marian import load_marian

    model, tokenizer = load_marian(tiny_teacher_dir)
    model.eval()
    short = sorted(dict.fromkeys(s for s, _ in bible_pairs["test"] if len(s) < 90), key=len)
    # 24 sentences of many lengths (so many limits), in corpus order
    sentences = [short[i] for i in range(0, len(short), max(1, len(short) // 24))][:24]
    sentences += ["Amen.", "And God saw the light, that it was good."]
    root = tmp_path_factory.mktemp("limit")
    fp32, int8 = root / "fp32", root / "int8"
    for d in (fp32, int8):
        d.mkdir()
        tokenizer.save_pretrained(d)
    # int8 with the activation ranges `wdctl export` measures (on its sample sentences)
    ranges = activation_ranges(model, tokenizer, SAMPLE_SENTENCES)
    export_translator(model, fp32 / "translator.onnx", int8_path=int8 / "translator.onnx", activation_ranges=ranges)
    return model, tokenizer, sentences, fp32, int8


def _in_orders(translate, sentences):
    """{name: lines in the input order}: batch 1, batch 32 (one batch), shuffled at 32 and at 5."""
    order = list(range(len(sentences)))
    random.Random(0).shuffle(order)
    shuffled = [sentences[i] for i in order]
    runs = {"batch 1": translate(sentences, 1), "batch 32": translate(sentences, 32)}
    for batch in (32, 5):
        lines = translate(shuffled, batch)
        back = [""] * len(sentences)
        for i, line in zip(order, lines):
            back[i] = line
        runs[f"shuffled, batch {batch}"] = back
    return runs


def _assert_same(runs: dict, reference: list[str] | None = None):
    first = reference if reference is not None else runs["batch 1"]
    for name, lines in runs.items():
        bad = [i for i, (a, b) in enumerate(zip(first, lines)) if a != b]
        assert not bad, f"{name}: {len(bad)} of {len(lines)} lines differ from batch 1, first {bad[0]}"


def _looping(model, tokenizer, sentences) -> list[int]:
    """The sentences whose greedy output, alone, runs to their own limit (limit - 1 tokens after
    the decoder start token, the last one the forced EOS)."""
    found = []
    for i, s in enumerate(sentences):
        enc = tokenizer([s], return_tensors="pt")
        limit = output_limit(enc["input_ids"].shape[1])
        with torch.inference_mode():
            out = model.generate(**enc, num_beams=1, max_length=limit)
        if out.shape[1] == limit:
            found.append(i)
    return found


def test_pytorch_lines_do_not_depend_on_the_batch(setup):
    from wdctl.passes.translate import translate_torch

    model, tokenizer, sentences, _, _ = setup
    for beams in (1, BEAMS):
        runs = _in_orders(lambda s, b: translate_torch(model, tokenizer, s, beams=beams, batch_size=b), sentences)
        _assert_same(runs)
    # the sentences loop: greedy search runs many to their own limit (beam search finds an end
    # for some loops, at lengths that depend on the limit), and the limits differ
    looping = _looping(model, tokenizer, sentences)
    assert len({output_limit(len(tokenizer(sentences[i])["input_ids"])) for i in looping}) >= 5
    assert len({output_limit(len(tokenizer(s)["input_ids"])) for s in sentences}) >= 10


def test_pytorch_rows_end_at_their_own_limit(setup):
    """In one padded batch (greedy), each looping sentence stops at exactly its own limit (token count),
    not at the longest source's; and with one sentence, `generate_limited` is plain `generate`
    at that sentence's limit (the batch-1 reference)."""
    from wdctl.passes.translate import generate_limited

    model, tokenizer, sentences, _, _ = setup
    pad = model.config.pad_token_id
    enc = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = generate_limited(model, enc["input_ids"], enc["attention_mask"], 1, 256)
    lengths = [int(n) for n in enc["attention_mask"].sum(1)]
    assert len(set(lengths)) >= 10
    for row, n in zip(out.tolist(), lengths):
        row = row[1:]
        while row and row[-1] == pad:
            row.pop()
        assert row[-1] == model.config.eos_token_id and len(row) <= output_limit(n) - 1
    looping = [i for i, row in enumerate(out.tolist())
               if len([t for t in row[1:] if t != pad]) == output_limit(lengths[i]) - 1]
    assert len({lengths[i] for i in looping}) >= 5  # looped to their own, different limits
    one = tokenizer(sentences[:1], return_tensors="pt")
    with torch.inference_mode():
        plain = model.generate(**one, num_beams=BEAMS, early_stopping=True,
                               max_length=output_limit(one["input_ids"].shape[1]))
        limited = generate_limited(model, one["input_ids"], one["attention_mask"], BEAMS, 256, early_stopping=True)
    assert plain.tolist() == limited.tolist()
    with torch.inference_mode():  # a caller's max_length still caps every row
        capped = generate_limited(model, enc["input_ids"], enc["attention_mask"], 1, 12)
    assert capped.shape[1] <= 12


def test_onnx_fp32_lines_do_not_depend_on_the_batch_and_equal_pytorch(setup):
    from wdctl.export.translator import PackageTranslator
    from wdctl.passes.translate import translate_torch

    model, tokenizer, sentences, fp32, _ = setup
    translator = PackageTranslator(fp32, rows_per_run=0)  # a batch is one search, whatever its size
    for beams in (1, BEAMS):
        runs = _in_orders(lambda s, b: translator.translate(s, beams=beams, batch_size=b), sentences)
        _assert_same(runs, translate_torch(model, tokenizer, sentences, beams=beams, batch_size=1))
    # the default searches of 16 rows too
    assert PackageTranslator(fp32).translate(sentences, beams=BEAMS) == runs["batch 1"]


def test_onnx_int8_lines_do_not_depend_on_the_batch(setup):
    """int8 quantizes each product's input with a calibrated fixed scale, not one per call over
    the whole batch (`wdctl.export.calibration`): a row's rounding is its own."""
    import onnx

    from wdctl.export.translator import PackageTranslator, translator_metadata
    from wdctl.export.translator_graph import _subgraphs

    _, _, sentences, _, int8 = setup
    ops = [n.op_type for g, _ in _subgraphs(onnx.load(str(int8 / "translator.onnx")).graph) for n in g.node]
    assert "DynamicQuantizeMatMul" not in ops and ops.count("MatMulIntegerToFloat") >= 10
    assert translator_metadata(int8 / "translator.onnx")["wdctl.int8_activations"] == "calibrated"
    translator = PackageTranslator(int8, rows_per_run=0)
    for beams in (1, BEAMS):
        _assert_same(_in_orders(lambda s, b: translator.translate(s, beams=beams, batch_size=b), sentences))


def test_onnx_int8_rows_end_at_their_own_limit(setup):
    """Whatever int8 does to the tokens, its looping rows stop at their own limits, not the
    longest source's."""
    from wdctl.export.translator import OnnxTranslator

    _, tokenizer, sentences, _, int8 = setup
    ids = [tokenizer(s)["input_ids"] for s in sentences]
    rows = OnnxTranslator(int8 / "translator.onnx").generate(ids, beams=1, max_length=256)
    assert all(len(r) <= output_limit(len(s)) - 1 for r, s in zip(rows, ids))
    assert len({len(s) for r, s in zip(rows, ids) if len(r) == output_limit(len(s)) - 1}) >= 5


def test_old_translator_files_still_run_with_per_sentence_limits(setup, tmp_path, monkeypatch):
    """A translator file from before the per-row limit (no `wdctl.output_limit` metadata, no limit
    in its decoder step) runs one search per distinct limit: the same lines."""
    import onnx

    from wdctl.export import translator_graph
    from wdctl.export.translator import OnnxTranslator, build_translator, marian_weights

    model, tokenizer, sentences, fp32, _ = setup
    monkeypatch.setattr(translator_graph, "_row_length_limit", lambda *args, **kwargs: None)
    proto = build_translator(marian_weights(model))
    kept = [p for p in proto.metadata_props if p.key != "wdctl.output_limit"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save_model(proto, tmp_path / "old.onnx")
    old = OnnxTranslator(tmp_path / "old.onnx")
    assert old.row_limit_rule is None
    ids = [tokenizer(s)["input_ids"] for s in sentences]
    assert old.generate(ids, beams=BEAMS, max_length=256) == \
        OnnxTranslator(fp32 / "translator.onnx").generate(ids, beams=BEAMS, max_length=256)


def test_a_file_with_another_limit_rule_is_refused(setup, tmp_path):
    import onnx

    from wdctl.core.errors import InputError
    from wdctl.export.translator import OnnxTranslator

    proto = onnx.load(str(setup[3] / "translator.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "wdctl.output_limit":
            prop.value = "2*n/1+5"
    onnx.save_model(proto, tmp_path / "other.onnx")
    with pytest.raises(InputError, match="export the package again"):
        OnnxTranslator(tmp_path / "other.onnx")
