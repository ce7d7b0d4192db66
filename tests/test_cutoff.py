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


def test_tiny_keeps_the_encoder_and_slices_a_narrow_decoder():
    from wdctl.passes.narrow_marian import NarrowMarianMTModel
    from wdctl.passes.student import resolve_student

    config = teacher_config(scale_embedding=True)
    torch.manual_seed(0)
    teacher = MarianMTModel(config).state_dict()
    s_config = student_config(config, resolve_student("tiny", config))
    student = cut_teacher(teacher, config, s_config)
    assert isinstance(student, NarrowMarianMTModel)
    state = student.state_dict()
    for key in (k for k in state if k.startswith("model.encoder.layers.")):
        assert torch.equal(state[key], teacher[key]), key
    # decoder 6 -> 1 takes teacher layer 0; cross-attention K/V keep the encoder's full width
    k = state["model.decoder.layers.0.encoder_attn.k_proj.weight"]
    assert torch.equal(k, teacher["model.decoder.layers.0.encoder_attn.k_proj.weight"][:16])
    assert torch.equal(state["model.decoder.layers.0.fc1.weight"], teacher["model.decoder.layers.0.fc1.weight"][:32, :16])
    # the narrower decoder keeps the residual stream's scale (sqrt(32/16) folded in) and the
    # teacher's positions; the encoder's table is the teacher's
    table = teacher["model.shared.weight"]
    assert torch.allclose(state["model.decoder.embed_tokens.weight"][:PAD], table[:PAD, :16] * 2 ** 0.5)
    assert torch.equal(state["model.encoder.embed_tokens.weight"][:PAD], table[:PAD])
    assert torch.count_nonzero(state["model.decoder.embed_tokens.weight"][PAD]) == 0
    assert torch.equal(state["model.decoder.embed_positions.weight"], teacher["model.decoder.embed_positions.weight"][:, :16])
    assert student.lm_head.weight is student.model.decoder.embed_tokens.weight


def test_a_start_selection_is_shared_with_the_coherent_generator():
    """cut-kd can start from the same (non-leading) slice as coherent WD."""
    from wdctl.passes.generator import ParameterGenerator, materialize_student
    from wdctl.passes.grouping import GroupPlan

    config = teacher_config()
    torch.manual_seed(0)
    teacher = MarianMTModel(config).state_dict()
    s_config = student_config(config, StudentSpec(3, 2, 32, 32, 64, 4, 4))
    plan = GroupPlan.build(config, s_config)
    start = {s.name: torch.randperm(s.teacher_dim)[: s.student_dim] for s in plan.projected_spaces}
    assert set(start) == {f"encoder.{i}.ffn" for i in range(3)}
    cut = cut_teacher(teacher, config, s_config, start=start).state_dict()
    generated = materialize_student(ParameterGenerator(teacher, plan, start=start), s_config).state_dict()
    for key in cut:
        assert torch.allclose(cut[key], generated[key], atol=1e-6), key
    fc1 = teacher["model.encoder.layers.2.fc1.weight"]
    assert torch.equal(cut["model.encoder.layers.1.fc1.weight"], fc1[start["encoder.1.ffn"]])
