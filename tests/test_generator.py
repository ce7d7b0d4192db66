"""Parameter generators, the generated student (phase 1) and materialization."""

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.core.errors import InputError
from wdctl.passes.generator import GeneratedStudent, ParameterGenerator, materialize_student
from wdctl.passes.grouping import GroupPlan
from wdctl.passes.student import resolve_student, student_config

PAD = 63


def teacher_config(**overrides) -> MarianConfig:
    values = dict(
        vocab_size=64, d_model=32, encoder_layers=4, decoder_layers=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=32,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=0, forced_eos_token_id=0,
        dropout=0.0, scale_embedding=True, activation_function="swish",
    )
    values.update(overrides)
    return MarianConfig(**values)


def setup(student, seed=0, **teacher_overrides):
    config = teacher_config(**teacher_overrides)
    torch.manual_seed(seed)
    teacher = MarianMTModel(config)
    s_config = student_config(config, resolve_student(student, config))
    plan = GroupPlan.build(config, s_config, subset_bytes=30_000)
    return teacher.state_dict(), plan, s_config


SHAPE_CHANGES = {
    "depth": {"encoder_layers": 2, "decoder_layers": 1},
    "width": {"d_model": 16, "encoder_attention_heads": 2, "decoder_attention_heads": 2},
    "ffn": {"encoder_ffn_dim": 32, "decoder_ffn_dim": 48},
    "heads": {"encoder_attention_heads": 2, "decoder_attention_heads": 1},
    "tiny": {"preset": "tiny"},
    "small": {"preset": "small"},
}


@pytest.mark.parametrize("change", sorted(SHAPE_CHANGES))
@pytest.mark.parametrize("tied", [True, False])
def test_generated_state_matches_the_student_model(change, tied):
    teacher_state, plan, s_config = setup(SHAPE_CHANGES[change], tie_word_embeddings=tied)
    expected = MarianMTModel(s_config).state_dict()
    generator = ParameterGenerator(teacher_state, plan).eval()
    with torch.no_grad():
        generated = generator()
    assert list(generated) == list(expected)
    for key, value in expected.items():
        assert generated[key].shape == value.shape, key
    assert generator.state_dict().keys() == dict(generator.named_parameters()).keys()
    assert sum(p.numel() for p in generator.parameters()) == plan.total_generator_params
    assert all(not b.requires_grad for b in generator.buffers())


def test_same_shape_student_starts_at_tanh_of_the_teacher():
    teacher_state, plan, _ = setup({})
    assert {e.form for e in plan.entries} == {"elementwise", "embedding"}
    with torch.no_grad():
        generated = ParameterGenerator(teacher_state, plan).eval()()
    for e in plan.entries:
        assert torch.equal(generated[e.name], torch.tanh(teacher_state[e.name])), e.name
    assert torch.equal(generated["lm_head.weight"], torch.tanh(teacher_state["model.shared.weight"]))


def test_untied_same_width_output_projection_starts_at_the_teacher():
    teacher_state, plan, _ = setup({}, tie_word_embeddings=False)
    with torch.no_grad():
        generated = ParameterGenerator(teacher_state, plan).eval()()
    assert torch.allclose(generated["lm_head.weight"], teacher_state["lm_head.weight"])


def test_pad_row_is_zero_and_ties_hold():
    teacher_state, plan, _ = setup("tiny")
    generated = ParameterGenerator(teacher_state, plan)()
    table = generated["model.shared.weight"]
    assert torch.count_nonzero(table[PAD]) == 0
    for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        assert generated[alias] is table


def test_seed_fixes_the_initialisation():
    teacher_state, plan, _ = setup("tiny")
    a, b, c = (ParameterGenerator(teacher_state, plan, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpointed_training_forward_matches_plain_autograd():
    teacher_state, plan, _ = setup("tiny")
    assert len(plan.subsets) > 1
    generator = ParameterGenerator(teacher_state, plan)
    grads = []
    for mode in (True, False):  # train: checkpointed subsets; eval: plain autograd
        generator.train(mode)
        generator.zero_grad()
        loss = sum((t.float() ** 2).sum() for t in generator().values())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in generator.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def batch():
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, PAD, (4, 7), generator=g)
    input_ids[:, -1] = 0
    labels = torch.randint(1, PAD, (4, 6), generator=g)
    labels[:, -1] = 0
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def test_phase1_trains_only_the_generator_and_leaves_the_teacher_intact():
    teacher_state, plan, _ = setup({"decoder_layers": 2, "d_model": 16,
                                    "encoder_attention_heads": 2, "decoder_attention_heads": 2})
    before = {k: v.clone() for k, v in teacher_state.items()}
    model = GeneratedStudent(ParameterGenerator(teacher_state, plan, seed=0)).train()
    skeleton = dict(model.skeleton.named_parameters(remove_duplicate=False))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in model.generator.parameters()}
    optimizer = torch.optim.Adam(trainable, lr=1e-2, betas=(0.9, 0.98))
    data, losses = batch(), []
    for _ in range(20):
        optimizer.zero_grad()
        loss = model(**data).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    # the skeleton keeps its own (unused, frozen) tensors after every call
    after = dict(model.skeleton.named_parameters(remove_duplicate=False))
    assert after.keys() == skeleton.keys() and all(after[k] is skeleton[k] for k in after)
    assert model.skeleton.lm_head.weight is model.skeleton.model.shared.weight
    assert all(p.grad is None for p in model.skeleton.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())
    for key, value in teacher_state.items():
        assert torch.equal(value, before[key]), key
    data = batch()
    logits = model(data["input_ids"], data["attention_mask"], data["input_ids"][:, :5]).logits
    assert logits.shape == (4, 5, 64)


def test_materialized_student_equals_the_generator_output():
    teacher_state, plan, s_config = setup("tiny")
    generator = ParameterGenerator(teacher_state, plan, seed=3)
    with torch.no_grad():  # move off the initialisation so the check is not trivial
        for p in generator.parameters():
            p.add_(0.01 * torch.randn_like(p))
    generator.eval()
    with torch.no_grad():
        expected = generator()
    student = materialize_student(generator, s_config)
    state = student.state_dict()
    assert state.keys() == expected.keys()
    for key in state:
        assert torch.equal(state[key], expected[key]), key
    assert student.lm_head.weight is student.model.shared.weight
    assert student.model.encoder.embed_tokens.weight is student.model.shared.weight
    assert torch.count_nonzero(student.model.shared.weight[PAD]) == 0
    wrapped = GeneratedStudent(generator).eval()
    data = batch()
    with torch.no_grad():
        assert torch.allclose(wrapped(**data).logits, student(**data).logits, atol=1e-6)
    out = student.generate(batch()["input_ids"][:2], max_new_tokens=5, num_beams=2)
    assert out.shape[0] == 2


def test_missing_teacher_weights_and_wrong_student_config_are_input_errors():
    teacher_state, plan, s_config = setup("tiny")
    partial = {k: v for k, v in teacher_state.items() if "decoder.layers.2.fc1" not in k}
    with pytest.raises(InputError, match="teacher weights lack model.decoder.layers.2.fc1"):
        ParameterGenerator(partial, plan)
    generator = ParameterGenerator(teacher_state, plan)
    with pytest.raises(InputError, match="does not match"):
        materialize_student(generator, teacher_config())
