"""Parameter generators (release and coherent forms), the generated student (phase 1) and
materialization."""

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.core.errors import InputError
from wdctl.passes.cutoff import cut_teacher
from wdctl.passes.generator import GeneratedStudent, ParameterGenerator, materialize_student
from wdctl.passes.grouping import GENERATOR_FORMS, GroupPlan
from wdctl.passes.narrow_marian import NarrowMarianMTModel, build_model
from wdctl.passes.student import STUDENT_PRESETS, resolve_student, student_config

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


def setup(student, seed=0, generator="release", **teacher_overrides):
    config = teacher_config(**teacher_overrides)
    torch.manual_seed(seed)
    teacher = MarianMTModel(config)
    with torch.no_grad():  # a trained teacher has non-zero biases and LayerNorm betas, gammas != 1
        for name, p in teacher.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    s_config = student_config(config, resolve_student(student, config))
    plan = GroupPlan.build(config, s_config, subset_bytes=30_000, generator=generator)
    return teacher.state_dict(), plan, s_config


SHAPE_CHANGES = {
    "depth": {"encoder_layers": 2, "decoder_layers": 1},
    "width": {"d_model": 16, "encoder_attention_heads": 2, "decoder_attention_heads": 2},
    "ffn": {"encoder_ffn_dim": 32, "decoder_ffn_dim": 48},
    "heads": {"encoder_attention_heads": 2, "decoder_attention_heads": 1},
    "tiny": {"preset": "tiny"},
    "small": {"preset": "small"},
    "halved": {"preset": "halved"},
}


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
@pytest.mark.parametrize("change", sorted(SHAPE_CHANGES))
@pytest.mark.parametrize("tied", [True, False])
def test_generated_state_matches_the_student_model(change, tied, generator):
    teacher_state, plan, s_config = setup(SHAPE_CHANGES[change], tie_word_embeddings=tied, generator=generator)
    expected = build_model(s_config).state_dict()
    generator = ParameterGenerator(teacher_state, plan).eval()
    with torch.no_grad():
        generated = generator()
    assert list(generated) == list(expected)
    for key, value in expected.items():
        assert generated[key].shape == value.shape, key
    assert generator.state_dict().keys() == dict(generator.named_parameters()).keys()
    assert sum(p.numel() for p in generator.parameters()) == plan.total_generator_params
    assert all(not b.requires_grad for b in generator.buffers())


def test_release_same_shape_student_starts_at_tanh_of_the_teacher():
    teacher_state, plan, _ = setup({}, generator="release")
    assert {e.form for e in plan.entries} == {"elementwise", "embedding"}
    with torch.no_grad():
        generated = ParameterGenerator(teacher_state, plan).eval()()
    for e in plan.entries:
        assert torch.equal(generated[e.name], torch.tanh(teacher_state[e.name])), e.name
    assert torch.equal(generated["lm_head.weight"], torch.tanh(teacher_state["model.shared.weight"]))


def test_release_untied_same_width_output_projection_starts_at_the_teacher():
    teacher_state, plan, _ = setup({}, tie_word_embeddings=False)
    with torch.no_grad():
        generated = ParameterGenerator(teacher_state, plan).eval()()
    assert torch.allclose(generated["lm_head.weight"], teacher_state["lm_head.weight"])


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
def test_pad_row_is_zero_and_ties_hold(generator):
    teacher_state, plan, _ = setup("halved", generator=generator)
    generated = ParameterGenerator(teacher_state, plan)()
    table = generated["model.shared.weight"]
    assert torch.count_nonzero(table[PAD]) == 0
    for alias in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        assert generated[alias] is table


def test_seed_fixes_the_release_initialisation():
    teacher_state, plan, _ = setup("halved")
    a, b, c = (ParameterGenerator(teacher_state, plan, seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
def test_checkpointed_training_forward_matches_plain_autograd(generator):
    teacher_state, plan, _ = setup("halved", generator=generator)
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


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
def test_phase1_trains_only_the_generator_and_leaves_the_teacher_intact(generator):
    teacher_state, plan, _ = setup({"decoder_layers": 2, "d_model": 16,
                                    "encoder_attention_heads": 2, "decoder_attention_heads": 2}, generator=generator)
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
    assert losses[-1] < losses[0] - 0.5, losses
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


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
@pytest.mark.parametrize("preset", ["halved", "tiny"])
def test_materialized_student_equals_the_generator_output(preset, generator):
    teacher_state, plan, s_config = setup(preset, generator=generator)
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
    if preset == "tiny":
        assert isinstance(student, NarrowMarianMTModel)
        assert student.lm_head.weight is student.model.decoder.embed_tokens.weight
        assert torch.count_nonzero(student.model.decoder.embed_tokens.weight[PAD]) == 0
        assert torch.count_nonzero(student.model.encoder.embed_tokens.weight[PAD]) == 0
    else:
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
    teacher_state, plan, s_config = setup("halved")
    partial = {k: v for k, v in teacher_state.items() if "decoder.layers.2.fc1" not in k}
    with pytest.raises(InputError, match="teacher weights lack model.decoder.layers.2.fc1"):
        ParameterGenerator(partial, plan)
    generator = ParameterGenerator(teacher_state, plan)
    with pytest.raises(InputError, match="does not match"):
        materialize_student(generator, teacher_config())


# --- the coherent generator (method spec 2b) -------------------------------------------------------

STEP0_SHAPES = {**{name: {"preset": name} for name in STUDENT_PRESETS}, **SHAPE_CHANGES}


def test_coherent_is_the_default():
    config = teacher_config()
    s_config = student_config(config, resolve_student("tiny", config))
    assert GroupPlan.build(config, s_config).generator == "coherent"


@pytest.mark.parametrize("change", sorted(STEP0_SHAPES))
@pytest.mark.parametrize("tied", [True, False])
def test_coherent_step0_student_equals_the_cut_off_student(change, tied):
    """Every preset (TINY included) and shape change: the step-0 coherent student is the leading
    slice, i.e. the cut-off student, in weights and in logits."""
    teacher_state, plan, s_config = setup(STEP0_SHAPES[change], generator="coherent", tie_word_embeddings=tied,
                                          scale_embedding=True)
    config = plan.teacher_config
    cut = cut_teacher(teacher_state, config, s_config)
    generator = ParameterGenerator(teacher_state, plan, seed=5).eval()
    generated = materialize_student(generator, s_config)
    cut_state, gen_state = cut.state_dict(), generated.state_dict()
    assert cut_state.keys() == gen_state.keys()
    for key in cut_state:
        assert torch.allclose(gen_state[key], cut_state[key], atol=1e-5, rtol=0), key
    data = batch()
    with torch.no_grad():
        wrapped = GeneratedStudent(generator).eval()(**data).logits
        assert torch.allclose(wrapped, cut(**data).logits, atol=1e-5, rtol=0)


def test_coherent_start_keeps_layer_norm_gammas_unsquashed():
    teacher_state, plan, s_config = setup("small", generator="coherent")
    with torch.no_grad():
        generated = ParameterGenerator(teacher_state, plan).eval()()
    # small keeps the encoder: every encoder tensor starts at the teacher's, not tanh of it
    for key in (k for k in generated if k.startswith("model.encoder.layers.")):
        assert torch.allclose(generated[key], teacher_state[key], atol=1e-6), key
    # the 2-layer decoder starts at the bottom layer of each group (0 and 2 of 4)
    for s, t in ((0, 0), (1, 2)):
        key = f"model.decoder.layers.{s}.final_layer_norm.weight"
        assert torch.allclose(generated[key], teacher_state[key.replace(f"layers.{s}.", f"layers.{t}.")], atol=1e-6)


@pytest.mark.parametrize("preset", ["small", "tiny", "halved"])
def test_phase1_gives_every_teacher_layer_a_mixing_gradient(preset):
    teacher_state, plan, _ = setup(preset, generator="coherent")
    model = GeneratedStudent(ParameterGenerator(teacher_state, plan)).train()
    model(**batch()).loss.backward()
    mixing = {e.name: e for e in plan.entries if e.form in ("shared-matrix", "shared-vector")}
    assert mixing, "the preset mixes no teacher layers"
    groups = [e for e in mixing.values() if e.ratio > 1]
    assert groups, "no student layer reads more than one teacher layer"
    for e in mixing.values():
        module = model.generator.generators[e.name.replace(".", "__")]
        assert torch.equal(module.W_L.detach(), torch.eye(e.ratio))
        assert module.w.detach().tolist() == [1.0 if i == e.select else 0.0 for i in range(e.ratio)]
        assert module.w.grad is not None and bool((module.w.grad != 0).all()), (e.name, module.w.grad)
    # the shared projections get gradients too, and are shared (one per space)
    projections = dict(model.generator.projections.items())
    assert len(projections) == len(plan.projected_spaces)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projections.values())


def test_coherent_projections_are_shared_by_space():
    teacher_state, plan, _ = setup("halved", generator="coherent")
    spaces = {s.name: s for s in plan.projected_spaces}
    assert set(spaces) >= {"residual", "encoder.0.ffn", "encoder.0.self_attn.qk", "encoder.0.self_attn.vo",
                           "decoder.0.encoder_attn.qk"}
    by_name = {e.name: e for e in plan.entries}
    q = by_name["model.decoder.layers.0.encoder_attn.q_proj.weight"]
    k = by_name["model.decoder.layers.0.encoder_attn.k_proj.weight"]
    assert q.out_space == k.out_space == "decoder.0.encoder_attn.qk"
    assert (q.in_space, k.in_space) == ("residual", "residual")
    fc1, fc2 = by_name["model.encoder.layers.1.fc1.weight"], by_name["model.encoder.layers.1.fc2.weight"]
    assert fc1.out_space == fc2.in_space == "encoder.1.ffn"
    generator = ParameterGenerator(teacher_state, plan)
    # projections are parameters of the generator once, not of every tensor's module
    names = [n for n, _ in generator.named_parameters()]
    assert sum(n.startswith("projections.") for n in names) == len(spaces)
    assert sum(p.numel() for p in generator.parameters()) == plan.total_generator_params


def test_tiny_keeps_the_encoder_and_carries_the_teachers_positions():
    teacher_state, plan, s_config = setup("tiny", generator="coherent", scale_embedding=True)
    assert s_config.decoder_d_model == 16 and s_config.d_model == 32
    spaces = {s.name: s for s in plan.projected_spaces}
    assert "decoder.residual" in spaces and "encoder.residual" not in spaces
    cross_k = next(e for e in plan.entries if e.name == "model.decoder.layers.0.encoder_attn.k_proj.weight")
    assert (cross_k.out_space, cross_k.in_space, cross_k.student_shape) == (
        "decoder.0.encoder_attn.qk", "encoder.residual", (16, 32))
    assert next(s for s in plan.spaces if s.name == "encoder.residual").identity
    with torch.no_grad():
        generated = ParameterGenerator(teacher_state, plan).eval()()
    positions = teacher_state["model.decoder.embed_positions.weight"][:, :16]
    assert torch.equal(generated["model.decoder.embed_positions.weight"], positions)
    assert torch.equal(generated["model.encoder.embed_positions.weight"],
                       teacher_state["model.encoder.embed_positions.weight"])
    table = teacher_state["model.shared.weight"]
    assert torch.allclose(generated["model.decoder.embed_tokens.weight"][:PAD], table[:PAD, :16] * 2 ** 0.5, atol=1e-6)
    assert torch.allclose(generated["model.encoder.embed_tokens.weight"][:PAD], table[:PAD], atol=1e-6)
    assert generated["lm_head.weight"] is generated["model.decoder.embed_tokens.weight"]


def test_coherent_parameters_never_exceed_the_release_form():
    for change in sorted(STEP0_SHAPES):
        for tied in (True, False):
            sizes = {g: setup(STEP0_SHAPES[change], generator=g, tie_word_embeddings=tied)[1].total_generator_params
                     for g in GENERATOR_FORMS}
            if tied:
                assert sizes["coherent"] <= sizes["release"], (change, sizes)


def test_a_bad_start_selection_is_an_input_error():
    teacher_state, plan, _ = setup("halved", generator="coherent")
    with pytest.raises(InputError, match="start of space residual must be 16 distinct teacher coordinates"):
        ParameterGenerator(teacher_state, plan, start={"residual": torch.zeros(16, dtype=torch.long)})


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_bf16_training_on_cpu_runs_eager_attention_and_restores_it(preset, tmp_path, monkeypatch):
    """Phase 1 and phase 2 through the shared loop under CPU bf16 autocast: the loss falls, the
    weights stay fp32, and every model inside is back on its own attention implementation."""
    from wdctl.passes import training
    from wdctl.passes.training import TrainConfig, train

    teacher_state, plan, s_config = setup(preset, generator="coherent")
    data = batch()
    examples = [(ids[ids != PAD].tolist(), lab.tolist()) for ids, lab in zip(data["input_ids"], data["labels"])] * 4
    seen, model = [], None
    real_loss = training.sequence_loss

    def loss(*args, **kwargs):  # what the loop runs under, seen from inside a step
        config = model.skeleton.config if isinstance(model, GeneratedStudent) else model.config
        seen.append((torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"), config._attn_implementation))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "sequence_loss", loss)
    cfg = TrainConfig(max_steps=15, max_tokens=64, lr=1e-2, warmup=2, log_every=1, save_every=100, precision="bf16")
    model = phase1 = GeneratedStudent(ParameterGenerator(teacher_state, plan, seed=0))
    before = phase1.skeleton.config._attn_implementation
    assert before != "eager"
    result = train(phase1, examples, cfg, tmp_path / "p1", pad_id=PAD, start_id=PAD)
    assert set(seen) == {(torch.bfloat16, "eager")}
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.3, result.history
    assert phase1.skeleton.config._attn_implementation == before
    assert all(p.dtype == torch.float32 for p in phase1.generator.parameters())
    model = phase2 = materialize_student(phase1.generator, s_config)
    seen.clear()
    result = train(phase2, examples, cfg, tmp_path / "p2", pad_id=PAD, start_id=PAD)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert set(seen) == {(torch.bfloat16, "eager")}
    assert phase2.config._attn_implementation == before
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in phase2.parameters())


def test_auto_precision_is_bf16_only_on_a_cpu_with_hardware_bf16(monkeypatch):
    from wdctl.passes import training
    from wdctl.passes.training import TrainConfig

    monkeypatch.setattr(training, "native_bf16", lambda: True)
    asked = TrainConfig(precision="auto", adam_betas=[0.9, 0.98])
    resolved = asked.validate()
    assert resolved.precision == "bf16" and resolved.adam_betas == (0.9, 0.98)
    assert asked.precision == "auto" and asked.adam_betas == [0.9, 0.98]  # a copy: the caller's config is kept
    monkeypatch.setattr(training, "native_bf16", lambda: False)
    assert TrainConfig(precision="auto").validate().precision == "fp32"
    assert TrainConfig(precision="bf16").validate().precision == "bf16"
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16, fp16"):
        TrainConfig(precision="int8").validate()
