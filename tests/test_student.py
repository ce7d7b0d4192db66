"""Student shapes: presets, dict overrides, validation messages, derived config."""

import pytest
from transformers import BartConfig, MarianConfig, MarianMTModel

from wdctl.core.errors import InputError
from wdctl.passes.narrow_marian import NarrowMarianConfig, NarrowMarianMTModel, build_model
from wdctl.passes.student import (
    STUDENT_PRESETS,
    StudentSpec,
    check_teacher,
    resolve_student,
    student_config,
    validate,
)


def teacher_config(**overrides) -> MarianConfig:
    values = dict(
        vocab_size=64, d_model=32, encoder_layers=4, decoder_layers=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=32,
        pad_token_id=63, decoder_start_token_id=63, activation_function="swish", scale_embedding=True,
    )
    values.update(overrides)
    return MarianConfig(**values)


def test_small_keeps_encoder_and_width_with_two_decoder_layers():
    spec = resolve_student("small", teacher_config())
    assert spec == StudentSpec(4, 2, 32, 64, 64, 4, 4)


def test_tiny_is_the_papers_teacher_encoder_with_a_half_width_one_layer_decoder():
    spec = resolve_student("tiny", teacher_config())
    assert spec == StudentSpec(4, 1, 32, 64, 32, 4, 2, decoder_d_model=16)
    assert spec.narrow and spec.decoder_width == 16
    assert spec.to_dict()["decoder_d_model"] == 16


def test_halved_halves_every_width_with_one_decoder_layer():
    spec = resolve_student("halved", teacher_config())
    assert spec == StudentSpec(4, 1, 16, 32, 32, 2, 2)
    assert not spec.narrow and "decoder_d_model" not in spec.to_dict()


def test_halved_heads_stay_a_divisor_of_the_halved_width():
    spec = resolve_student("halved", teacher_config(d_model=10, encoder_attention_heads=5, decoder_attention_heads=5))
    assert spec.d_model == 5
    assert spec.encoder_attention_heads == spec.decoder_attention_heads == 1
    spec = resolve_student("tiny", teacher_config(d_model=10, encoder_attention_heads=5, decoder_attention_heads=5))
    assert (spec.d_model, spec.decoder_d_model, spec.encoder_attention_heads, spec.decoder_attention_heads) == (10, 5, 5, 1)


def test_presets_registry_lists_the_papers_shapes_and_the_halved_model():
    assert set(STUDENT_PRESETS) == {"small", "tiny", "halved"}


def test_dict_defaults_to_teacher_and_can_start_from_a_preset():
    teacher = teacher_config()
    assert resolve_student({"decoder_layers": 3, "d_model": None}, teacher) == StudentSpec(4, 3, 32, 64, 64, 4, 4)
    assert resolve_student({"preset": "halved", "decoder_layers": 2}, teacher) == StudentSpec(4, 2, 16, 32, 32, 2, 2)
    assert resolve_student({"preset": "tiny", "decoder_layers": 2}, teacher) == StudentSpec(
        4, 2, 32, 64, 32, 4, 2, decoder_d_model=16)
    # a decoder width equal to d_model is one width (a plain Marian student)
    assert resolve_student({"decoder_d_model": 32}, teacher) == StudentSpec(4, 4, 32, 64, 64, 4, 4)


@pytest.mark.parametrize(
    "student, message",
    [
        ({"encoder_attention_heads": 3}, "encoder_attention_heads=3 does not divide d_model=32"),
        ({"d_model": 24, "decoder_attention_heads": 5}, "decoder_attention_heads=5 does not divide d_model=24"),
        ({"decoder_layers": 5}, "decoder_layers=5 exceeds the teacher's 4: a student may not have more layers"),
        ({"encoder_layers": 6}, "encoder_layers=6 exceeds the teacher's 4"),
        ({"d_model": 64}, "d_model=64 exceeds the teacher's 32: a student may not be wider"),
        ({"decoder_ffn_dim": 128}, "decoder_ffn_dim=128 exceeds the teacher's 64"),
        ({"decoder_layers": 0}, "decoder_layers must be positive"),
        ({"d_model": "16"}, "d_model must be an integer"),
        ({"depth": 2}, "unknown student field(s) depth"),
        ("huge", "unknown student preset 'huge'; choose one of halved, small, tiny"),
        ({"decoder_d_model": 64}, "decoder_d_model=64 exceeds the teacher's 32: a student may not be wider"),
        ({"decoder_d_model": 10}, "decoder_attention_heads=4 does not divide decoder_d_model=10"),
    ],
)
def test_impossible_students_are_rejected_with_one_clear_line(student, message):
    with pytest.raises(InputError) as err:
        resolve_student(student, teacher_config())
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_non_marian_teacher_is_rejected_naming_the_supported_type():
    with pytest.raises(InputError, match="unsupported teacher model type 'bart': wdctl supports only 'marian'"):
        validate(StudentSpec(1, 1, 16, 32, 32, 2, 2), BartConfig())


def test_a_narrow_student_is_not_a_supported_teacher():
    narrow = student_config(teacher_config(), resolve_student("tiny", teacher_config()))
    assert isinstance(narrow, NarrowMarianConfig)
    with pytest.raises(InputError, match="unsupported teacher model type 'wdctl_narrow_marian'"):
        check_teacher(narrow)
    with pytest.raises(InputError, match="unsupported teacher model type 'wdctl_narrow_marian'"):
        resolve_student("small", narrow)


def test_tiny_config_is_a_narrow_marian_with_its_own_tied_decoder_embedding():
    teacher = teacher_config()
    config = student_config(teacher, resolve_student("tiny", teacher))
    assert config.model_type == "wdctl_narrow_marian"
    assert (config.d_model, config.decoder_d_model, config.decoder_ffn_dim, config.encoder_ffn_dim) == (32, 16, 32, 64)
    assert config.share_encoder_decoder_embeddings is False and config.tie_word_embeddings
    assert StudentSpec.from_config(config) == resolve_student("tiny", teacher)
    model = build_model(config)
    assert isinstance(model, NarrowMarianMTModel)
    assert model.model.encoder.embed_tokens.weight.shape == (64, 32)
    assert model.model.decoder.embed_tokens.weight.shape == (64, 16)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    layer = model.model.decoder.layers[0]
    assert layer.encoder_attn.k_proj.weight.shape == layer.encoder_attn.v_proj.weight.shape == (16, 32)
    assert layer.fc1.weight.shape == (32, 16)


def test_student_config_keeps_everything_but_the_shape():
    teacher = teacher_config(tie_word_embeddings=False)
    spec = resolve_student("halved", teacher)
    config = student_config(teacher, spec)
    assert StudentSpec.from_config(config) == spec
    assert StudentSpec.from_config(teacher) == StudentSpec(4, 4, 32, 64, 64, 4, 4)  # teacher untouched
    for name in ("vocab_size", "decoder_vocab_size", "pad_token_id", "decoder_start_token_id", "eos_token_id",
                 "activation_function", "scale_embedding", "max_position_embeddings", "tie_word_embeddings",
                 "share_encoder_decoder_embeddings"):
        assert getattr(config, name) == getattr(teacher, name), name
    model = MarianMTModel(config)
    assert model.model.decoder.layers[0].fc1.weight.shape == (32, 16)
    assert len(model.model.decoder.layers) == 1


def test_narrow_student_loads_but_is_refused_as_teacher(tmp_path):
    """wdctl_narrow_marian is a supported *student* model type (load_marian, exports), never a teacher;
    freeze_pad_row keeps the narrow decoder's own <pad> row at zero too."""
    import torch

    from wdctl.passes.marian import TEACHER_PRESETS, freeze_pad_row, load_marian_config, marian_config
    from wdctl.passes.narrow_marian import build_model, count_parameters

    teacher = marian_config(TEACHER_PRESETS["tiny"], 50)
    config = student_config(teacher, resolve_student("tiny", teacher))
    model = build_model(config)
    assert count_parameters(config) == model.num_parameters()
    with torch.no_grad():
        model.get_decoder().embed_tokens.weight.fill_(1.0)
    freeze_pad_row(model)
    pad = config.pad_token_id
    decoder_embedding = model.get_decoder().embed_tokens.weight
    assert decoder_embedding is not model.get_input_embeddings().weight
    assert not decoder_embedding[pad].any() and not model.get_input_embeddings().weight[pad].any()
    model.save_pretrained(tmp_path, safe_serialization=True)
    assert load_marian_config(tmp_path).model_type == "wdctl_narrow_marian"
    with pytest.raises(InputError, match="teacher"):
        load_marian_config(tmp_path, teacher=True)


def test_ct2_reason_names_the_narrow_model():
    from wdctl.passes.marian import TEACHER_PRESETS, marian_config
    from wdctl.passes.narrow_marian import ct2_unsupported

    teacher = marian_config(TEACHER_PRESETS["tiny"], 50)
    assert ct2_unsupported(teacher) is None
    reason = ct2_unsupported(student_config(teacher, resolve_student("tiny", teacher)))
    assert "wdctl_narrow_marian" in reason and "\n" not in reason
