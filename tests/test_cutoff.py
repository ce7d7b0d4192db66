"""Cut-off initialisation: bottom layer of each group, leading slices, zero pad row."""

import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.passes.cutoff import cut_teacher
from wdctl.passes.student import StudentSpec, student_config

PAD = 63


def teacher_config(**overrides) -> MarianConfig:
    values = dict(
        vocab_size=64, d_model=32, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=32,
        pad_token_id=PAD, decoder_start_token_id=PAD,
    )
    values.update(overrides)
    return MarianConfig(**values)


def cut(spec: StudentSpec, **overrides):
    config = teacher_config(**overrides)
    torch.manual_seed(0)
    teacher = MarianMTModel(config).state_dict()
    teacher["model.shared.weight"][PAD] = 1.0  # a drifted pad row must come out zero
    teacher["final_logits_bias"].fill_(0.5)  # copied, whatever its value
    s_config = student_config(config, spec)
    return teacher, s_config, cut_teacher(teacher, config, s_config)


def test_cut_student_takes_leading_slices_of_the_bottom_layer_of_each_group():
    teacher, s_config, student = cut(StudentSpec(3, 4, 16, 32, 48, 2, 2))
    state = student.state_dict()
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in MarianMTModel(s_config).state_dict().items()}
    # encoder 6 -> 3 takes teacher layers 0, 2, 4; decoder 6 -> 4 takes 0, 2, 4, 5
    for side, layers in (("encoder", (0, 2, 4)), ("decoder", (0, 2, 4, 5))):
        for s, t in enumerate(layers):
            prefix = f"model.{side}.layers.{s}."
            for key in (k for k in state if k.startswith(prefix)):
                source = teacher[key.replace(f"layers.{s}.", f"layers.{t}.")]
                value = state[key]
                assert torch.equal(value, source[tuple(slice(0, n) for n in value.shape)]), key
    assert state["model.decoder.layers.0.fc1.weight"].shape == (48, 16)
    table = student.model.shared.weight
    assert torch.equal(table[:PAD], teacher["model.shared.weight"][:PAD, :16])
    assert torch.count_nonzero(table[PAD]) == 0
    assert student.lm_head.weight is table


def test_untied_output_projection_is_sliced_too():
    teacher, _, student = cut(StudentSpec(6, 2, 16, 64, 64, 4, 4), tie_word_embeddings=False)
    assert torch.equal(student.lm_head.weight, teacher["lm_head.weight"][:, :16])
    assert student.lm_head.weight is not student.model.shared.weight
    assert torch.equal(student.final_logits_bias, teacher["final_logits_bias"])
