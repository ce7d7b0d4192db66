"""Weight grouping: layer partition, classes and forms (release and coherent), spaces, subsets,
costs, opus-mt-sized plans."""

import json
import math
import re

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.core.errors import InputError
from wdctl.passes.grouping import FP32_BYTES, GENERATOR_FORMS, GroupPlan, generator_sizes, partition_layers
from wdctl.passes.narrow_marian import build_model
from wdctl.passes.student import StudentSpec, resolve_student, student_config


def teacher_config(**overrides) -> MarianConfig:
    values = dict(
        vocab_size=64, d_model=32, encoder_layers=6, decoder_layers=6, encoder_ffn_dim=64, decoder_ffn_dim=64,
        encoder_attention_heads=4, decoder_attention_heads=4, max_position_embeddings=32,
        pad_token_id=63, decoder_start_token_id=63,
    )
    values.update(overrides)
    return MarianConfig(**values)


def plan_for(student, teacher=None, **kwargs) -> GroupPlan:
    teacher = teacher or teacher_config()
    return GroupPlan.build(teacher, student_config(teacher, resolve_student(student, teacher)), **kwargs)


def state_keys(config: MarianConfig) -> list[str]:
    with torch.device("meta"):
        return list(build_model(config).state_dict())


@pytest.mark.parametrize("n_teacher, n_student", [(6, 6), (6, 3), (6, 4), (5, 2), (3, 1), (6, 1)])
def test_partition_uses_every_teacher_layer_once_in_contiguous_blocks(n_teacher, n_student):
    blocks = partition_layers(n_teacher, n_student)
    assert len(blocks) == n_student
    assert [layer for block in blocks for layer in block] == list(range(n_teacher))
    assert all(len(b) > 0 for b in blocks)
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # larger blocks at the bottom


def test_partition_examples():
    assert [list(b) for b in partition_layers(6, 4)] == [[0, 1], [2, 3], [4], [5]]
    assert [len(b) for b in partition_layers(5, 2)] == [3, 2]
    assert [list(b) for b in partition_layers(6, 3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(InputError):
        partition_layers(2, 3)


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
def test_plan_names_every_student_tensor_and_reads_every_teacher_layer_once(generator):
    teacher = teacher_config()
    plan = plan_for({"encoder_layers": 4, "decoder_layers": 2}, teacher, generator=generator)
    planned = [k for e in plan.entries for k in (e.name, *e.aliases)] + [c.name for c in plan.constants]
    assert sorted(planned) == sorted(state_keys(plan.student_config))
    read = [n for e in plan.entries for n in e.teacher_names]
    assert len(read) == len(set(read))
    layer_keys = {k for k in state_keys(teacher) if ".layers." in k}
    assert {n for n in read if ".layers." in n} == layer_keys
    fc1 = [e for e in plan.entries if e.role == "decoder.fc1.weight"]
    assert [e.teacher_names for e in fc1] == [
        tuple(f"model.decoder.layers.{l}.fc1.weight" for l in (0, 1, 2)),
        tuple(f"model.decoder.layers.{l}.fc1.weight" for l in (3, 4, 5)),
    ]


def test_release_forms_follow_shapes_and_ratio():
    plan = plan_for({"decoder_layers": 3, "encoder_ffn_dim": 32}, generator="release")
    forms = {(e.role, e.student_layer): e.form for e in plan.entries}
    assert forms[("encoder.self_attn.q_proj.weight", 0)] == "elementwise"
    assert forms[("encoder.self_attn_layer_norm.weight", 0)] == "elementwise"
    assert forms[("encoder.fc1.weight", 0)] == "matrix"  # same depth, narrower FFN
    assert forms[("encoder.fc1.bias", 0)] == "vector"
    assert forms[("encoder.fc2.bias", 0)] == "elementwise"
    assert forms[("decoder.encoder_attn.k_proj.weight", 1)] == "matrix"
    assert forms[("decoder.final_layer_norm.bias", 2)] == "vector"
    assert forms[("shared", None)] == "embedding"


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
def test_tied_embeddings_are_one_generator_and_positions_are_constants(generator):
    plan = plan_for("halved", generator=generator)
    shared = [e for e in plan.entries if e.form.endswith("embedding")]
    assert len(shared) == 1
    assert shared[0].name == "model.shared.weight"
    assert set(shared[0].aliases) == {
        "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}
    assert shared[0].pad_row == 63
    assert {(c.name, c.source) for c in plan.constants} == {
        ("final_logits_bias", "teacher"),
        ("model.encoder.embed_positions.weight", "skeleton"),
        ("model.decoder.embed_positions.weight", "skeleton"),
    }


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
def test_untied_output_projection_and_unshared_embeddings_get_their_own_generators(generator):
    plan = plan_for("halved", teacher_config(tie_word_embeddings=False), generator=generator)
    assert [e.role for e in plan.entries if e.form.endswith("projection")] == ["lm_head"]
    plan = plan_for("halved", teacher_config(share_encoder_decoder_embeddings=False), generator=generator)
    embeddings = {e.role: e.aliases for e in plan.entries if e.form.endswith("embedding")}
    assert embeddings == {"encoder.embed_tokens": (), "decoder.embed_tokens": ("lm_head.weight",)}


def test_release_parameter_counts_follow_the_forms():
    plan = plan_for({"decoder_layers": 3, "d_model": 16, "encoder_attention_heads": 2, "decoder_attention_heads": 2},
                    generator="release")
    by_key = {(e.role, e.student_layer): e for e in plan.entries}
    q = by_key[("decoder.self_attn.q_proj.weight", 0)]  # 2 instances of 32x32 -> 16x16
    assert q.params == 2 * 2 + 2 + 32 * 16 + 32 * 16 + 2 * 16 * 16
    b = by_key[("decoder.fc1.bias", 1)]  # 2 instances of 64 -> 64
    assert b.params == 2 * 2 + 2 + 64 * 64 + 2 * 64
    emb = by_key[("shared", None)]
    assert emb.params == 2 * 64 * 16 + 32 * 16
    assert plan.total_generator_params == sum(e.params for e in plan.entries)
    assert plan.total_generator_bytes == FP32_BYTES * plan.total_generator_params


def test_subsets_are_consecutive_and_within_budget():
    budget = 40_000
    plan = plan_for("small", subset_bytes=budget)
    assert [i for s in plan.subsets for i in s] == list(range(len(plan.entries)))
    assert len(plan.subsets) > 1
    for s in plan.subsets:
        size = sum(plan.entries[i].param_bytes + plan.entries[i].teacher_bytes for i in s)
        assert size <= budget or len(s) == 1
    assert len(plan_for("small").subsets) == 1  # default budget holds a tiny model at once
    with pytest.raises(InputError, match="subset_bytes must be positive"):
        plan_for("small", subset_bytes=0)


def test_student_must_keep_the_teachers_vocabulary():
    teacher = teacher_config()
    other = student_config(teacher, StudentSpec(6, 2, 32, 64, 64, 4, 4))
    other.vocab_size = 32
    with pytest.raises(InputError, match="student vocab_size=32 differs from the teacher's 64"):
        GroupPlan.build(teacher, other)


OPUS_MT = dict(
    vocab_size=58101, decoder_vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
    encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
    activation_function="swish", scale_embedding=True, max_position_embeddings=512, pad_token_id=58100,
    decoder_start_token_id=58100, eos_token_id=0, share_encoder_decoder_embeddings=True,
    tie_word_embeddings=True, static_position_embeddings=True,
)


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
@pytest.mark.parametrize("preset", ["small", "tiny", "halved"])
def test_opus_mt_plan_reports_generator_size(preset, generator):
    teacher = MarianConfig(**OPUS_MT)
    plan = plan_for(preset, teacher, generator=generator)
    assert plan.total_generator_params > 0
    assert sum(plan.phase_memory("phase1", max_tokens=2500).values()) > plan.total_generator_bytes * 4
    text = plan.format()
    assert f"generator parameters: {plan.total_generator_params:,}" in text
    assert re.search(r"^decoder\.fc1\.weight\s+6\s", text, re.M)
    summary = json.loads(json.dumps(plan.to_dict()))
    assert summary["total_generator_params"] == plan.total_generator_params
    assert summary["student"]["decoder_layers"] == (2 if preset == "small" else 1)
    assert summary["generator"] == generator
    emb = next(e for e in plan.entries if e.form.endswith("embedding"))
    assert emb.teacher_bytes == math.prod((58101, 512)) * FP32_BYTES


@pytest.mark.parametrize("preset", ["small", "tiny", "halved"])
def test_opus_mt_coherent_generator_is_not_larger_than_the_release(preset):
    teacher = MarianConfig(**OPUS_MT)
    s_config = student_config(teacher, resolve_student(preset, teacher))
    sizes = generator_sizes(teacher, s_config)
    assert set(sizes) == set(GENERATOR_FORMS)
    assert sizes["coherent"] <= sizes["release"], sizes
    if preset == "halved":
        assert round(sizes["release"] / 1e6, 1) == 104.8  # the release's size for the half-width student


def test_coherent_forms_follow_spaces():
    plan = plan_for({"decoder_layers": 3, "encoder_ffn_dim": 32})
    assert plan.generator == "coherent"
    by_key = {(e.role, e.student_layer): e for e in plan.entries}
    assert by_key[("encoder.self_attn.q_proj.weight", 0)].form == "elementwise"  # nothing changes shape
    fc1 = by_key[("encoder.fc1.weight", 0)]  # same depth, narrower FFN: one projected space
    assert (fc1.form, fc1.out_space, fc1.in_space) == ("shared-matrix", "encoder.0.ffn", "residual")
    assert by_key[("encoder.fc2.weight", 0)].in_space == "encoder.0.ffn"
    assert by_key[("encoder.fc2.bias", 0)].form == "elementwise"
    assert by_key[("decoder.final_layer_norm.bias", 2)].form == "shared-vector"  # 6 -> 3: r = 2
    assert by_key[("shared", None)].form == "shared-embedding"
    assert [s.name for s in plan.projected_spaces] == ["encoder.0.ffn", "encoder.1.ffn", "encoder.2.ffn",
                                                      "encoder.3.ffn", "encoder.4.ffn", "encoder.5.ffn"]
    # r = 2 mixing: W_L (2x2) and w (2) on top of W and B
    assert by_key[("decoder.fc1.weight", 0)].params == 2 * 2 + 2 + 2 * 64 * 32
    assert plan.total_generator_params == sum(e.params for e in plan.entries) + 6 * 64 * 32
    text = plan.format()
    assert "generator form: coherent (6 shared projection(s)" in text
    spaces = json.loads(json.dumps(plan.to_dict()))["spaces"]
    assert {"name": "encoder.0.ffn", "teacher_dim": 64, "student_dim": 32, "heads": None, "params": 2048} in spaces


def test_attention_spaces_know_their_heads():
    plan = plan_for("halved")
    space = next(s for s in plan.spaces if s.name == "decoder.0.self_attn.qk")
    assert (space.teacher_dim, space.student_dim, space.heads) == (32, 16, (4, 2))


def test_unknown_generator_is_an_input_error():
    with pytest.raises(InputError, match="unknown generator 'fancy'; choose one of coherent, release"):
        plan_for("small", generator="fancy")
