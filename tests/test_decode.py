"""wdctl's onnxruntime decoder: token-for-token agreement with PyTorch and optimum `generate()`.

Two tiny models: the conftest teacher (trained for seconds, so its outputs are repetitive and
run to the length limit) and a random model with strong weights and a raised EOS bias, whose
outputs are varied and end at many different lengths (early stop, length penalty, forced EOS
and the beam bookkeeping all get exercised).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wdctl.core.errors import InputError

SENTENCES = 16


@pytest.fixture(scope="session")
def sentences(bible_pairs):
    short = [s for s, _ in bible_pairs["dev"] + bible_pairs["test"] if len(s) < 70]
    return short[:SENTENCES]


@pytest.fixture(scope="session")
def diverse_model_dir(tmp_path_factory, tiny_teacher_dir):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, MarianMTModel

    out = tmp_path_factory.mktemp("diverse") / "model"
    config = AutoConfig.from_pretrained(tiny_teacher_dir)
    config.init_std = 0.3
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    with torch.no_grad():
        model.final_logits_bias[0, config.eos_token_id] = 10.0
        model.model.shared.weight[config.pad_token_id].zero_()
    model.generation_config = GenerationConfig.from_pretrained(tiny_teacher_dir)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def packages(tmp_path_factory, tiny_teacher_dir, diverse_model_dir):
    """fp32 packages of both models (exported once, validated) and an int8 package of each."""
    from wdctl.export.onnx_export import export_onnx
    from wdctl.export.quantize import quantize_package

    root = tmp_path_factory.mktemp("packages")
    found = {}
    for name, model_dir in (("teacher", tiny_teacher_dir), ("diverse", diverse_model_dir)):
        report = export_onnx(model_dir, root / f"{name}-fp32")
        assert report["validation"]["passed"], report["validation"]
        found[f"{name}-fp32"] = root / f"{name}-fp32"
        quantize_package(root / f"{name}-fp32", root / f"{name}-int8", mode="int8")
        found[f"{name}-int8"] = root / f"{name}-int8"
    found["teacher"], found["diverse"] = tiny_teacher_dir, diverse_model_dir
    return found


@pytest.fixture(scope="session")
def tokenizer(tiny_teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


_CACHE: dict = {}


def _translator(path, **kw):
    from wdctl.export.decode import OrtTranslator

    key = (str(path), tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = OrtTranslator(path, **kw)
    return _CACHE[key]


def _optimum(path):
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    from wdctl.export.session import session_options

    key = ("optimum", str(path))
    if key not in _CACHE:
        _CACHE[key] = ORTModelForSeq2SeqLM.from_pretrained(path, session_options=session_options(1))
    return _CACHE[key]


def _torch_model(path):
    from wdctl.passes.marian import load_marian

    key = ("torch", str(path))
    if key not in _CACHE:
        _CACHE[key] = load_marian(path, with_tokenizer=False)[0]
    return _CACHE[key]


def _strip(row, pad):
    row = list(row[1:])
    while row and row[-1] == pad:
        row.pop()
    return row


def _compare(reference, translator, tokenizer, sentences, batch, beams, length_penalty=1.0,
             early_stopping=True, prune=True):
    """Run `reference.generate` and `translator.generate` batch by batch; return the rows."""
    from wdctl.export.decode import output_limit

    pad = translator.settings.pad_token_id
    ref_rows, our_rows = [], []
    for start in range(0, len(sentences), batch):
        enc = tokenizer(sentences[start:start + batch], return_tensors="pt", padding=True)
        limit = output_limit(enc["input_ids"].shape[1])
        extra = {"early_stopping": early_stopping, "length_penalty": length_penalty} if beams > 1 else {}
        with torch.inference_mode():
            ref = reference.generate(**enc, num_beams=beams, max_length=limit, **extra)
        ref_rows += [_strip(r, pad) for r in ref.tolist()]
        our_rows += translator.generate(enc["input_ids"].numpy(), enc["attention_mask"].numpy(), beams=beams,
                                        max_length=limit, length_penalty=length_penalty,
                                        early_stopping=early_stopping, prune=prune)
    return ref_rows, our_rows


def _assert_same(ref_rows, our_rows):
    bad = [i for i, (a, b) in enumerate(zip(ref_rows, our_rows)) if a != b]
    assert len(ref_rows) == len(our_rows) >= SENTENCES
    assert not bad, f"{len(bad)} sentences differ, first {bad[0]}: {ref_rows[bad[0]]} vs {our_rows[bad[0]]}"


@pytest.mark.parametrize("model", ["teacher", "diverse"])
@pytest.mark.parametrize("beams,batch", [(1, 1), (1, 8), (4, 1), (4, 8)])
def test_fp32_package_matches_pytorch_generate(packages, tokenizer, sentences, model, beams, batch):
    ref, ours = _compare(_torch_model(packages[model]), _translator(packages[f"{model}-fp32"]), tokenizer,
                         sentences, batch, beams)
    _assert_same(ref, ours)


@pytest.mark.parametrize("beams,batch,length_penalty,early_stopping", [
    (1, 1, 1.0, True), (1, 8, 1.0, True), (4, 1, 1.0, True), (4, 8, 1.0, True),
    (4, 8, 0.6, False), (4, 8, 2.0, "never"), (3, 8, -0.5, True),
])
def test_decoder_matches_optimum_generate_fp32(packages, tokenizer, sentences, beams, batch, length_penalty,
                                               early_stopping):
    path = packages["diverse-fp32"]
    ref, ours = _compare(_optimum(path), _translator(path), tokenizer, sentences, batch, beams,
                         length_penalty, early_stopping)
    _assert_same(ref, ours)


@pytest.mark.parametrize("beams,batch,prune", [(1, 1, True), (4, 1, True), (1, 8, False), (4, 8, False)])
def test_decoder_matches_optimum_generate_int8(packages, tokenizer, sentences, beams, batch, prune):
    """int8 activation scales are per tensor: at batch > 1 the finished rows must stay in the
    batch (prune=False) for exactly generate()'s numbers."""
    path = packages["diverse-int8"]
    ref, ours = _compare(_optimum(path), _translator(path), tokenizer, sentences, batch, beams, prune=prune)
    _assert_same(ref, ours)


def test_teacher_int8_matches_optimum_greedy_and_beam(packages, tokenizer, sentences):
    path = packages["teacher-int8"]
    for beams in (1, 4):
        ref, ours = _compare(_optimum(path), _translator(path), tokenizer, sentences, 1, beams)
        _assert_same(ref, ours)


def test_outputs_exercise_the_search(packages, tokenizer, sentences):
    """The random model's outputs end early and late, never contain <pad>, and the ones cut at
    the length limit end with the forced EOS."""
    from wdctl.export.decode import output_limit

    tr = _translator(packages["diverse-fp32"])
    s = tr.settings
    lengths = []
    for sentence in sentences:
        enc = tokenizer([sentence], return_tensors="np")
        limit = output_limit(enc["input_ids"].shape[1])
        (row,) = tr.generate(enc["input_ids"], enc["attention_mask"], beams=4, max_length=limit)
        assert s.pad_token_id not in row
        assert row and row[-1] in s.eos_token_ids and len(row) <= limit - 1
        lengths.append(len(row) / (limit - 1))
    assert min(lengths) < 0.5 and max(lengths) == 1.0


def test_translate_matches_translate_torch_and_keeps_empty_lines(packages, tokenizer, sentences):
    from wdctl.passes.translate import translate_torch

    lines = ["", sentences[0], "   ", *sentences[1:6], ""]
    model = _torch_model(packages["diverse"])
    tr = _translator(packages["diverse-fp32"])
    for beams in (1, 4):
        ours = tr.translate(lines, beams=beams, batch_size=3)
        assert ours == translate_torch(model, tokenizer, lines, beams=beams, batch_size=3)
        assert len(ours) == len(lines) and ours[0] == ours[2] == ours[-1] == ""
    assert tr.translate([]) == []


def test_output_limit_is_translate_torchs_rule():
    from wdctl.export.decode import output_limit
    from wdctl.passes.translate import output_limit as torch_rule

    assert all(output_limit(n) == torch_rule(n) for n in range(0, 600, 7))


def test_generate_edge_cases(packages):
    tr = _translator(packages["diverse-fp32"])
    ids = np.array([[5, 6, 0]], dtype=np.int64)
    mask = np.ones_like(ids)
    assert tr.generate(ids[:0], mask[:0]) == []
    assert tr.generate(ids, mask, max_length=1) == [[]]
    assert tr.generate(ids, mask, beams=2, max_length=2) == [[tr.settings.eos_token_ids[0]]]  # forced EOS
    with pytest.raises(InputError):
        tr.generate(ids, mask[:, :2])
    with pytest.raises(InputError):
        tr.generate(ids, mask, beams=0)


def test_session_options_and_torch_threads(packages):
    from wdctl.export.session import session_options

    torch.set_num_threads(2)
    _translator(packages["teacher-fp32"], threads=2)
    assert torch.get_num_threads() == 1
    opts = session_options(3)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(InputError):
        session_options(0)


def test_cuda_without_onnxruntime_gpu_is_a_clear_input_error(packages):
    import onnxruntime as ort

    from wdctl.export.decode import OrtTranslator

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDA is installed here")
    with pytest.raises(InputError, match=r"onnxruntime-gpu not installed: pip install 'wdctl\[gpu\]'"):
        OrtTranslator(packages["teacher-fp32"], device="cuda")


def test_not_a_package_is_an_input_error(tmp_path, packages):
    from wdctl.export.decode import OrtTranslator

    with pytest.raises(InputError, match="not found"):
        OrtTranslator(tmp_path / "missing")
    with pytest.raises(InputError, match="config.json"):
        OrtTranslator(tmp_path)
    (tmp_path / "config.json").write_text((packages["teacher-fp32"] / "config.json").read_text())
    with pytest.raises(InputError, match="encoder_model.onnx"):
        OrtTranslator(tmp_path)


@pytest.mark.parametrize("beams,batch", [(1, 8), (4, 1), (4, 8)])
def test_io_binding_runner_gives_the_same_tokens(packages, tokenizer, sentences, beams, batch):
    """The IO-binding runner (`--device cuda`) exercised on the CPU: cache kept as OrtValues,
    reordered by the Gather helper graph; it must give the numpy runner's tokens."""
    from wdctl.export.decode import OrtTranslator

    path = packages["diverse-fp32"]
    bound = OrtTranslator(path)
    bound.io_binding = True  # what device="cuda" turns on; the cache stays on this device, the CPU
    ref, ours = _compare(_optimum(path), bound, tokenizer, sentences[:8], batch, beams)
    assert ref == ours
