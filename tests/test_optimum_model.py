"""optimum's `generate()` over exported packages (`wdctl.export.optimum_model`): PyTorch's
translations, quantized files under either name, clear errors; and `output_limit`, the
output-length rule every translator shares.

Two tiny models: the conftest teacher (trained for seconds, so its outputs are repetitive and
run to the length limit) and a random model with strong weights and a raised EOS bias, whose
outputs are varied and end at many different lengths.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.batching import output_limit

SENTENCES = 16


@pytest.fixture(scope="module")
def sentences(bible_pairs):
    short = [s for s, _ in bible_pairs["dev"] + bible_pairs["test"] if len(s) < 70]
    return short[:SENTENCES]


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def packages(tmp_path_factory, tiny_teacher_dir, diverse_model_dir):
    """fp32 packages of both models (exported once, validated) and an int8 package of the random one."""
    from wdctl.export.onnx_export import export_onnx
    from wdctl.export.quantize import quantize_package

    root = tmp_path_factory.mktemp("packages")
    for name, model_dir in (("teacher", tiny_teacher_dir), ("diverse", diverse_model_dir)):
        report = export_onnx(model_dir, root / f"{name}-fp32")
        assert report["validation"]["passed"], report["validation"]
    quantize_package(root / "diverse-fp32", root / "diverse-int8", mode="int8")
    return {"teacher": tiny_teacher_dir, "diverse": diverse_model_dir, "teacher-fp32": root / "teacher-fp32",
            "diverse-fp32": root / "diverse-fp32", "diverse-int8": root / "diverse-int8"}


@pytest.fixture(scope="module")
def tokenizer(tiny_teacher_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_teacher_dir)


@pytest.mark.parametrize("model", ["teacher", "diverse"])
@pytest.mark.parametrize("beams,batch,length_penalty", [(1, 8, 1.0), (4, 1, 1.0), (4, 8, 1.0), (4, 8, 0.6)])
def test_fp32_package_translates_like_pytorch(packages, tokenizer, sentences, model, beams, batch, length_penalty):
    from wdctl.export.optimum_model import load_optimum
    from wdctl.passes.marian import load_marian
    from wdctl.passes.translate import translate_torch

    kwargs = {"beams": beams, "batch_size": batch, "length_penalty": length_penalty}
    ref = translate_torch(load_marian(packages[model], with_tokenizer=False)[0], tokenizer, sentences, **kwargs)
    ours = translate_torch(load_optimum(packages[f"{model}-fp32"]), tokenizer, sentences, **kwargs)
    bad = [i for i, (a, b) in enumerate(zip(ref, ours)) if a != b]
    assert len(ours) == len(ref) == SENTENCES and not bad, f"{len(bad)} differ, first: {ref[bad[0]]!r} vs {ours[bad[0]]!r}"


def test_quantized_files_load_under_optimums_names_too(packages, tokenizer, sentences, tmp_path):
    """An int8 package as wdctl writes it (standard names) and as optimum's quantizer names it
    (`*_quantized.onnx`): the same int8 files, so the same translations."""
    from wdctl.export.optimum_model import load_optimum
    from wdctl.export.package import OnnxPackage
    from wdctl.passes.translate import translate_torch

    renamed = tmp_path / "renamed"
    shutil.copytree(packages["diverse-int8"], renamed)
    for standard, quantized in OnnxPackage.QUANTIZED.items():
        (renamed / standard).rename(renamed / quantized)
    outputs = []
    for path in (packages["diverse-int8"], renamed):
        model = load_optimum(path)
        files = {Path(str(model.encoder.path)).name, Path(str(model.decoder.path)).name}
        assert files == {OnnxPackage(path).encoder.name, OnnxPackage(path).decoder.name}
        outputs.append(translate_torch(model, tokenizer, sentences, beams=4, batch_size=1))
    assert outputs[0] == outputs[1] and sum(bool(t) for t in outputs[0]) > SENTENCES // 2


def test_outputs_exercise_the_search(packages, tokenizer, sentences):
    """The random model's outputs end early and late, never contain <pad>, and the ones cut at
    `output_limit` end with the forced EOS: the package keeps the generation config."""
    from wdctl.export.optimum_model import load_optimum

    model = load_optimum(packages["diverse-fp32"])
    eos, pad = model.config.eos_token_id, model.config.pad_token_id
    lengths = []
    for sentence in sentences:
        enc = tokenizer([sentence], return_tensors="pt")
        limit = output_limit(enc["input_ids"].shape[1])
        row = model.generate(**enc, num_beams=4, max_length=limit, early_stopping=True)[0].tolist()[1:]
        assert pad not in row and row and row[-1] == eos and len(row) <= limit - 1
        lengths.append(len(row) / (limit - 1))
    assert min(lengths) < 0.5 and max(lengths) == 1.0


def test_output_limit_is_one_and_a_half_source_tokens_plus_ten():
    assert [output_limit(n) for n in (0, 1, 2, 10, 101)] == [10, 11, 13, 25, 161]


def test_session_options_and_torch_threads(packages):
    from wdctl.export.optimum_model import load_optimum
    from wdctl.export.session import session_options

    torch.set_num_threads(2)
    model = load_optimum(packages["teacher-fp32"], threads=2)
    assert torch.get_num_threads() == 1
    for part in (model.encoder, model.decoder):
        opts = part.session.get_session_options()
        assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
        assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(InputError):
        session_options(0)


def test_cuda_without_onnxruntime_gpu_is_a_clear_input_error(packages):
    import onnxruntime as ort

    from wdctl.export.optimum_model import load_optimum

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with CUDA is installed here")
    with pytest.raises(InputError, match=r"onnxruntime-gpu not installed: pip install 'wdctl\[gpu\]'"):
        load_optimum(packages["teacher-fp32"], device="cuda")


def test_not_a_package_and_broken_files_are_clear_errors(tmp_path, packages):
    from wdctl.export.optimum_model import load_optimum

    with pytest.raises(WdctlError, match="no encoder_model.onnx"):
        load_optimum(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(packages["teacher-fp32"], broken)
    (broken / "decoder_model_merged.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(InputError, match="optimum cannot load the package") as info:
        load_optimum(broken)
    assert "\n" not in str(info.value)
