"""An opus-mt-sized teacher (random weights) through phase 1, to every preset, within 24 GiB;
on the same shape (configs only, meta device) the coherent generator is never larger than the
release's.

The teacher has the opus-mt-en-es configuration: d 512, 6+6 layers, 8 heads, FFN 2048, swish,
scaled embeddings, static sinusoidal positions, a shared vocabulary of 58,101 with tied
embeddings, pad = decoder start = 58,100, eos 0. Two phase-1 steps per preset on a small
synthetic batch (the same loss and optimizer as `train`, without its multi-GB checkpoints)
measure the peak resident memory and check it against the plan's estimate; the estimate's
growth with the batch is checked against what the loss over 58,101 pieces measurably takes per
token (the activations that the benchmark `benchmarks/memory_estimate.py` measures in full).
"""

from __future__ import annotations

import gc

import pytest
import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.passes.generator import GeneratedStudent, ParameterGenerator
from wdctl.passes.grouping import GENERATOR_FORMS, GroupPlan, generator_sizes
from wdctl.passes.student import resolve_student, size_note, student_config
from wdctl.passes.training import collate, sequence_loss
from wdctl.core.runinfo import PeakRSS, release_free_memory, rss_bytes

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


def synthetic_batch(seed: int = 0, sentences: int = 8, length: int = 24):
    g = torch.Generator().manual_seed(seed)
    examples = [(torch.randint(2, PAD, (length - 1,), generator=g).tolist() + [0],
                 torch.randint(2, PAD, (length - 1,), generator=g).tolist() + [0]) for _ in range(sentences)]
    return collate(examples, PAD, PAD)


def loss_bytes_per_token(tokens: tuple[int, int] = (250, 750), kd_weight: float = 0.0) -> float:
    """Peak RSS the output layer and the label-smoothed loss of `train` take per target token over
    the opus-mt vocabulary, measured as the growth between two batch sizes; with `kd_weight`, also
    the teacher's logits and the word-level KL term."""
    g = torch.Generator().manual_seed(0)
    table, bias = torch.randn(VOCAB, 512, generator=g) * 0.02, torch.zeros(1, VOCAB)
    growth = []
    for n in tokens:
        hidden = torch.randn(1, n, 512, generator=g).requires_grad_()
        labels = torch.randint(0, VOCAB, (1, n), generator=g)
        release_free_memory()
        start = rss_bytes()
        with PeakRSS() as memory:
            logits = torch.nn.functional.linear(hidden, table) + bias
            teacher_logits = None
            if kd_weight:
                with torch.no_grad():
                    teacher_logits = torch.nn.functional.linear(hidden, table.flip(0)) + bias
            sequence_loss(logits, labels, 0.1, kd_weight, teacher_logits).backward()
            del logits, teacher_logits
        growth.append(memory.peak_mb * 2**20 - start)
    return (growth[1] - growth[0]) / (tokens[1] - tokens[0])


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_the_memory_estimate_grows_with_the_batch_by_at_least_what_the_loss_takes(preset):
    """The phase estimates grow with --max-tokens by more than the loss alone measurably takes
    per token (logits over 58,101 pieces, their log-softmax and both gradients: ~0.9 MB a token,
    the growth an estimate without activations missed)."""
    config = opus_mt_config()
    plan = GroupPlan.build(config, student_config(config, resolve_student(preset, config)))
    measured = loss_bytes_per_token()
    assert measured > 3 * VOCAB * 4  # at least three fp32 rows of the vocabulary per token
    for phase in ("phase1", "phase2"):
        at = {n: sum(plan.phase_memory(phase, n).values()) for n in (1000, 2000)}
        per_token = (at[2000] - at[1000]) / 1000
        print(f"{preset} {phase}: estimate {at[1000] / 2**30:.2f} GiB at 1000 tokens, {at[2000] / 2**30:.2f} GiB at "
              f"2000; {per_token / 2**20:.2f} MiB a token, the loss alone measured {measured / 2**20:.2f} MiB")
        assert per_token > measured


def test_the_memory_estimate_counts_the_teachers_logits_and_the_kl_term():
    """With --kd-weight the estimate grows per token by at least what the teacher's logits and the
    word-level KL term measurably add over the plain loss; the intermediate-state loss, which keeps
    only the teacher's logits beside its states, adds less."""
    config = opus_mt_config()
    plan = GroupPlan.build(config, student_config(config, resolve_student("tiny", config)))
    extra = loss_bytes_per_token(kd_weight=0.5) - loss_bytes_per_token()
    assert extra > 2 * VOCAB * 4  # at least two more fp32 rows of the vocabulary per token
    added = {loss: sum(plan.phase_memory("phase2", 1000, teacher_loss=loss).values())
             - sum(plan.phase_memory("phase2", 1000).values()) for loss in ("states", "kl")}
    print(f"KL term measured {extra / 2**20:.2f} MiB a token; estimate adds {added['kl'] / 1000 / 2**20:.2f} (kl), "
          f"{added['states'] / 1000 / 2**20:.2f} (states)")
    assert added["kl"] / 1000 > extra
    assert 0 < added["states"] < added["kl"]


def test_inspect_says_why_tiny_is_most_of_an_opus_mt_teacher():
    config = opus_mt_config()
    note = size_note("tiny", config)
    assert note.startswith("note: tiny is 0.88 of the teacher, more than small (0.77): 44.6 M of its 65.1 M")
    assert "58,101 pieces" in note and "untied from the encoder's" in note and "--student halved is 0.28" in note
    assert size_note("small", config) is None and size_note("halved", config) is None
    bundled = MarianConfig(**{**config.to_dict(), "vocab_size": 8000, "decoder_vocab_size": 8000, "d_model": 256,
                              "encoder_ffn_dim": 1024, "decoder_ffn_dim": 1024, "encoder_attention_heads": 4,
                              "decoder_attention_heads": 4, "pad_token_id": 7999, "decoder_start_token_id": 7999})
    assert size_note("tiny", bundled) is None  # 0.62 of the bundled teacher's shape, below small's 0.68


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
    batch = synthetic_batch()
    labels = batch.pop("labels")
    estimate = plan.phase_memory("phase1", labels.numel())
    assert sum(estimate.values()) < LIMIT_MB * 2**20

    release_free_memory()
    start = rss_bytes()
    with PeakRSS() as memory:
        model = GeneratedStudent(ParameterGenerator(state, plan, seed=1)).train()
        params = [p for p in model.parameters() if p.requires_grad]
        assert sum(p.numel() for p in params) == plan.total_generator_params
        optimizer = torch.optim.Adam(params, lr=7e-4, betas=(0.9, 0.98))
        losses = []
        for _ in range(2):
            loss = sequence_loss(model(**batch).logits, labels, 0.1) / int((labels != -100).sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        del model, params, optimizer
    gc.collect()
    # What the phase adds to the process (the runtime and the teacher were there before it).
    own = sum(v for k, v in estimate.items() if k not in ("runtime", "teacher")) / 2**20
    growth = memory.peak_mb - start / 2**20
    print(f"{preset}/{generator}: generator {plan.total_generator_params:,} params, {labels.numel()} tokens: "
          f"estimate {own:.0f} MiB above the teacher, measured {growth:.0f} MiB (peak RSS {memory.peak_mb:.0f} "
          f"MiB); losses {losses}")
    assert memory.peak_mb < LIMIT_MB
    assert 0.75 * own < growth < 1.25 * own
    assert losses[1] < losses[0]
    assert all(torch.isfinite(torch.tensor(losses)))
