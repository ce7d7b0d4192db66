"""Importance ranking of the coherent start (and cut-kd's slice): planted signals are kept."""

import pytest
import torch

from wdctl.core.errors import InputError
from wdctl.passes.cutoff import cut_teacher
from wdctl.passes.generator import ParameterGenerator, materialize_student
from wdctl.passes.grouping import GroupPlan
from wdctl.passes.marian import build_teacher
from wdctl.passes.selection import choose_start_layers, importance_start
from wdctl.passes.student import resolve_student, student_config
from wdctl.passes.training import collate

VOCAB = 100


def batches():
    g = torch.Generator().manual_seed(0)
    examples = [(torch.randint(1, VOCAB - 2, (7,), generator=g).tolist() + [0],
                 torch.randint(1, VOCAB - 2, (5,), generator=g).tolist() + [0]) for _ in range(6)]
    return [collate(examples, VOCAB - 1, VOCAB - 1)]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    model = build_teacher("tiny", VOCAB).eval()  # 2+2 layers, d 64, FFN 128, 2 heads of 32
    with torch.no_grad():
        layer = model.model.encoder.layers[1]
        layer.fc2.weight[:, 100] *= 50  # FFN neuron 100 of encoder layer 1 dominates
        layer.self_attn.out_proj.weight[:, 32:] *= 50  # head 1 of encoder layer 1's self-attention
        model.model.shared.weight[:, 60] += 5.0  # residual coordinate 60 carries most energy
    return model


def test_importance_keeps_planted_neurons_heads_and_coordinates(teacher):
    s_config = student_config(teacher.config, resolve_student("halved", teacher.config))
    plan = GroupPlan.build(teacher.config, s_config)
    start = importance_start(plan, teacher, batches())
    assert set(start) == {s.name for s in plan.projected_spaces}
    for space in plan.projected_spaces:
        kept = start[space.name]
        assert len(kept) == space.student_dim and len(set(kept.tolist())) == space.student_dim
        assert torch.equal(kept, kept.sort().values)  # teacher order
    assert 100 in start["encoder.1.ffn"].tolist()
    assert 60 in start["residual"].tolist()
    # whole heads: student head 0 is teacher head 1, the same head for queries/keys and values
    assert start["encoder.1.self_attn.qk"].tolist() == list(range(32, 64))
    assert start["encoder.1.self_attn.vo"].tolist() == list(range(32, 64))


@pytest.mark.parametrize("preset", ["tiny", "halved"])
def test_cut_kd_and_coherent_wd_start_from_the_same_ranked_slice(teacher, preset):
    s_config = student_config(teacher.config, resolve_student(preset, teacher.config))
    plan = GroupPlan.build(teacher.config, s_config)
    start = importance_start(plan, teacher, batches())
    state = teacher.state_dict()
    cut = cut_teacher(state, teacher.config, s_config, start=start).state_dict()
    generated = materialize_student(ParameterGenerator(state, plan, start=start), s_config).state_dict()
    for key in cut:
        assert torch.allclose(cut[key], generated[key], atol=1e-5, rtol=0), key


def test_importance_needs_a_batch(teacher):
    s_config = student_config(teacher.config, resolve_student("halved", teacher.config))
    with pytest.raises(InputError, match="at least one batch"):
        importance_start(GroupPlan.build(teacher.config, s_config), teacher, [])


def test_start_layers_chosen_by_loss_are_shared_by_cut_kd_and_coherent_wd():
    torch.manual_seed(1)
    config = build_teacher("tiny", VOCAB).config
    config.decoder_layers = 3  # 3 teacher decoder layers -> 1 student layer: a real choice
    from transformers import MarianMTModel

    teacher = MarianMTModel(config).eval()
    with torch.no_grad():  # make teacher layer 1 the obvious start: the others are scrambled
        for i in (0, 2):
            for p in teacher.model.decoder.layers[i].parameters():
                p.mul_(-30.0)
    state = teacher.state_dict()
    s_config = student_config(config, resolve_student("tiny", config))
    plan = GroupPlan.build(config, s_config)
    choice = choose_start_layers(plan, state, batches())
    assert choice[("decoder", 0)] == 1
    assert all(v == 0 for k, v in choice.items() if k[0] == "encoder")
    moved = plan.with_start_layers(choice)
    generator = ParameterGenerator(state, moved)
    module = generator.generators["model__decoder__layers__0__fc1__weight"]
    assert module.w.tolist() == [0.0, 1.0, 0.0]
    cut = cut_teacher(state, config, s_config, start_layers=choice).state_dict()
    generated = materialize_student(generator, s_config).state_dict()
    for key in cut:
        assert torch.allclose(cut[key], generated[key], atol=1e-5, rtol=0), key
    assert torch.equal(cut["model.decoder.layers.0.fc1.weight"], state["model.decoder.layers.1.fc1.weight"][:64, :32])


def test_block_importance_picks_the_layer_that_changes_its_input_most():
    torch.manual_seed(1)
    config = build_teacher("tiny", VOCAB).config
    config.decoder_layers = 3
    from transformers import MarianMTModel

    from wdctl.passes.selection import block_importance, most_important_layers

    teacher = MarianMTModel(config).eval()
    with torch.no_grad():  # decoder layer 2 keeps only its LayerNorms; layer 1's FFN swamps its input
        layer = teacher.model.decoder.layers[2]
        for proj in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
            proj.weight.zero_()
            proj.bias.zero_()
        teacher.model.decoder.layers[1].fc2.weight.mul_(1000.0)
    importance = block_importance(teacher, batches())
    assert importance["decoder"].shape == (3,) and importance["encoder"].shape == (2,)
    assert bool(((importance["decoder"] >= 0) & (importance["decoder"] <= 2)).all())
    assert int(importance["decoder"].argmax()) == 1 and float(importance["decoder"][2]) < 0.05
    plan = GroupPlan.build(config, student_config(config, resolve_student("tiny", config)))
    assert most_important_layers(plan, importance)[("decoder", 0)] == 1
