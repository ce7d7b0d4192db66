"""wdctl's NarrowMarianMTModel (the paper's TINY): Auto-class loading, safetensors, generation."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForSeq2SeqLM

import wdctl  # noqa: F401 - registers the model classes
from wdctl.passes.cutoff import cut_teacher
from wdctl.passes.marian import build_teacher, generation_config
from wdctl.passes.narrow_marian import NARROW_MODEL_TYPE, NarrowMarianMTModel, count_parameters
from wdctl.passes.student import resolve_student, student_config

VOCAB = 100


def tiny_student():
    torch.manual_seed(0)
    teacher = build_teacher("tiny", VOCAB).eval()
    s_config = student_config(teacher.config, resolve_student("tiny", teacher.config))
    student = cut_teacher(teacher.state_dict(), teacher.config, s_config)
    student.generation_config = generation_config(s_config, num_beams=3, max_length=12)
    return teacher, student


def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB - 1, (2, 6), generator=g)
    ids[:, -1] = 0
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_tiny_saves_with_safetensors_and_loads_with_the_auto_class(tmp_path):
    teacher, student = tiny_student()
    assert isinstance(student, NarrowMarianMTModel)
    assert count_parameters(student.config) == student.num_parameters() < teacher.num_parameters()
    student.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == NARROW_MODEL_TYPE
    assert AutoConfig.from_pretrained(tmp_path).decoder_d_model == 32
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path, use_safetensors=True, trust_remote_code=False).eval()
    assert type(loaded) is NarrowMarianMTModel
    before, after = student.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # the decoder's position table (the teacher's, sliced) is saved too
        assert torch.equal(before[key], after[key]), key
    assert loaded.lm_head.weight is loaded.model.decoder.embed_tokens.weight
    # the same trainable tensors as the built model (a phase resumed from a saved student
    # checks them against its checkpoint): the saved position tables stay frozen
    trainable = lambda m: {n for n, p in m.named_parameters() if p.requires_grad}  # noqa: E731
    assert trainable(loaded) == trainable(student) and not any("embed_positions" in n for n in trainable(loaded))
    batch = inputs()
    with torch.no_grad():
        decoder_ids = torch.full((2, 1), student.config.decoder_start_token_id)
        assert torch.equal(student(**batch, decoder_input_ids=decoder_ids).logits,
                           loaded(**batch, decoder_input_ids=decoder_ids).logits)
    for beams in (1, 3):
        a = student.generate(**batch, num_beams=beams, max_new_tokens=8)
        b = loaded.generate(**batch, num_beams=beams, max_new_tokens=8)
        assert a.shape[0] == 2 and torch.equal(a, b)


def test_import_wdctl_alone_stays_light_and_still_registers(tmp_path):
    _, student = tiny_student()
    student.save_pretrained(tmp_path, safe_serialization=True)
    code = (
        "import sys, wdctl\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import AutoModelForSeq2SeqLM\n"
        f"m = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path)!r})\n"
        "print(type(m).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "NarrowMarianMTModel"


@pytest.mark.parametrize("first", ["wdctl.passes.narrow_marian", "wdctl.recipes.compress"])
def test_importing_a_module_that_imports_transformers_first_registers_without_a_warning(first):
    """A process whose first import is wdctl's model module (or a module importing it) before
    transformers: the registration hook must not warn about the half-imported module, and the
    classes still end up registered."""
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    import {first}\n"
        "assert not [w for w in caught if 'could not register' in str(w.message)], [str(w.message) for w in caught]\n"
        "from transformers import AutoConfig\n"
        "from wdctl.passes.narrow_marian import NARROW_MODEL_TYPE, NarrowMarianConfig\n"
        "assert AutoConfig.for_model(NARROW_MODEL_TYPE).__class__ is NarrowMarianConfig\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd="/",
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]


def test_tiny_exports_to_onnx_with_a_kv_cache(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from wdctl.passes.narrow_onnx import export_narrow

    _, student = tiny_student()
    model_dir, out = tmp_path / "model", tmp_path / "onnx"
    student.save_pretrained(model_dir, safe_serialization=True)
    export_narrow(model_dir, out)
    batch = inputs()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    encoder = ort.InferenceSession(str(out / "encoder_model.onnx"))
    hidden = encoder.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        ref = student.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    assert hidden.shape[-1] == 64 and np.abs(hidden - ref).max() < 1e-4
    merged = ort.InferenceSession(str(out / "decoder_model_merged.onnx"))
    names = [i.name for i in merged.get_inputs()]
    outputs = [o.name for o in merged.get_outputs()]
    heads = student.config.decoder_attention_heads
    size = student.config.decoder_d_model // heads
    start = torch.full((2, 1), student.config.decoder_start_token_id)
    feed = {"input_ids": start.numpy(), "encoder_attention_mask": mask.numpy(), "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([False])}
    feed.update({n: np.zeros((2, heads, 1, size), dtype=np.float32) for n in names if n.startswith("past_key_values")})
    first = dict(zip(outputs, merged.run(None, feed)))
    step = torch.tensor(first["logits"][:, -1].argmax(-1))[:, None]
    feed = {"input_ids": step.numpy(), "encoder_attention_mask": mask.numpy(), "encoder_hidden_states": hidden,
            "use_cache_branch": np.array([True]),
            **{n: first[n.replace("past_key_values", "present")] for n in names if n.startswith("past_key_values")}}
    second = merged.run(None, feed)[0]
    with torch.no_grad():
        logits = student(**batch, decoder_input_ids=torch.cat([start, step], 1)).logits.numpy()
    assert np.abs(first["logits"][:, -1] - logits[:, 0]).max() < 1e-4
    assert np.abs(second[:, -1] - logits[:, 1]).max() < 1e-4
