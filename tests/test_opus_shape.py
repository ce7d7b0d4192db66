"""An opus-mt-sized teacher (random weights) through phase 1, to every preset, within 24 GiB;
on the same shape (configs only, meta device) the coherent generator is never larger than the
release's.

The teacher has the opus-mt-en-es configuration: d 512, 6+6 layers, 8 heads, FFN 2048, swish,
scaled embeddings, static sinusoidal positions, a shared vocabulary of 58,101 with tied
embeddings, pad = decoder start = 58,100, eos 0. Two phase-1 steps per preset on a tiny
synthetic batch (the same loss and optimizer as `train`, without its multi-GB checkpoints)
measure the peak resident memory and check it against the plan's estimate.
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.passes.generator import GeneratedStudent, ParameterGenerator
from wdctl.passes.grouping import GENERATOR_FORMS, GroupPlan, generator_sizes
from wdctl.passes.student import resolve_student, student_config
from wdctl.passes.training import collate, sequence_loss
from wdctl.core.runinfo import PeakRSS

VOCAB, PAD = 58101, 58100
LIMIT_MB = 24 * 1024


def opus_mt_config() -> MarianConfig:
    return MarianConfig(
        vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_attention_heads=8, decoder_attention_heads=8,
        activation_function="swish", scale_embedding=True, static_position_embeddings=True,
        max_position_embeddings=512, share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=0, forced_eos_token_id=0,
        dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
    )


@pytest.fixture(scope="module")
def teacher():
    config = opus_mt_config()
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    assert model.num_parameters() == 74_410_496  # the opus-mt-en-es size
    return config, model.state_dict()


def synthetic_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    examples = [(torch.randint(2, PAD, (8,), generator=g).tolist() + [0],
                 torch.randint(2, PAD, (9,), generator=g).tolist() + [0]) for _ in range(4)]
    return collate(examples, PAD, PAD)


@pytest.mark.parametrize("preset", ["small", "tiny", "halved"])
def test_coherent_generator_is_not_larger_than_the_release_on_the_opus_mt_shape(preset):
    config = opus_mt_config()
    sizes = generator_sizes(config, student_config(config, resolve_student(preset, config)))
    print(f"{preset}: generator parameters {sizes}")
    assert sizes["coherent"] <= sizes["release"]
    if preset == "halved":
        assert 104_700_000 < sizes["release"] < 104_850_000  # 104.8M, the release's half-width generator


@pytest.mark.parametrize("generator", GENERATOR_FORMS)
@pytest.mark.parametrize("preset, decoder_layers, d_model, decoder_width", [
    ("small", 2, 512, 512), ("tiny", 1, 512, 256),
])
def test_phase1_runs_on_an_opus_mt_teacher_within_24_gib(teacher, preset, decoder_layers, d_model, decoder_width,
                                                         generator):
    config, state = teacher
    s_config = student_config(config, resolve_student(preset, config))
    assert (s_config.decoder_layers, s_config.d_model, s_config.encoder_layers) == (decoder_layers, d_model, 6)
    assert getattr(s_config, "decoder_d_model", s_config.d_model) == decoder_width
    plan = GroupPlan.build(config, s_config, generator=generator)
    text = plan.format()
    assert f"generator parameters: {plan.total_generator_params:,}" in text
    assert plan.total_generator_params > 50_000_000  # the generator is larger than the student
    assert plan.estimate_phase1_bytes() < LIMIT_MB * 2**20

    gc.collect()
    with PeakRSS() as memory:
        model = GeneratedStudent(ParameterGenerator(state, plan, seed=1)).train()
        params = [p for p in model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in params) == plan.total_generator_params
        optimizer = torch.optim.Adam(params, lr=7e-4, betas=(0.9, 0.98))
        batch = synthetic_batch()
        labels = batch.pop("labels")
        losses = []
        for _ in range(2):
            loss = sequence_loss(model(**batch).logits, labels, 0.1) / int((labels != -100).sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        del model, params, optimizer
    gc.collect()
    print(f"{preset}/{generator}: generator {plan.total_generator_params:,} params, estimate "
          f"{plan.estimate_phase1_bytes() / 2**20:.0f} MiB, peak RSS {memory.peak_mb:.0f} MiB, losses {losses}")
    assert memory.peak_mb < LIMIT_MB
    # The estimate is of the right size: the measured peak (which includes torch and the test
    # process itself) is neither far below nor far above it.
    assert 0.5 * plan.estimate_phase1_bytes() / 2**20 < memory.peak_mb < 2 * plan.estimate_phase1_bytes() / 2**20 + 2048
    assert losses[1] < losses[0]
    assert all(torch.isfinite(torch.tensor(losses)))
