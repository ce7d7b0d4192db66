"""Peak resident memory of a training phase, estimated from shapes before anything is loaded
(the resource guard's figure; `wdctl inspect` prints it).

`training_peak` counts what a phase holds at the peak of its backward pass: the runtime, the
weights it keeps, and the activations of one micro-batch, which grow with `max_tokens`. The
constants are measured (`benchmarks/memory_estimate.py`: SMALL and TINY, phase 1 and phase 2,
from the bundled teacher and from an opus-mt-shaped one, at two `--max-tokens`; results in
`examples/results/memory-estimate/`); the formula around them follows the shapes, so it carries
from a d-256, 8k-vocabulary model to a d-512, 58k-vocabulary one.
"""

from __future__ import annotations

from wdctl.passes.narrow_marian import count_parameters

# Python with torch and transformers imported, the tokenizer, a ~30k-pair encoded corpus and the
# allocator's slack (330 MiB after the imports alone, measured on Linux x86-64).
RUNTIME_BYTES = 512 * 2**20
# Per token and vocabulary entry, what the loss holds at the start of backward: four fp32 rows
# (the logits, their log-softmax and the gradients of both). Measured the same under bf16
# autocast (label-smoothed cross-entropy runs in fp32, and the half-precision logits and
# gradient come on top of its fp32 copies).
LOGIT_BYTES = 16
# Bytes per element of the activations layers save for backward (autocast keeps layer norms and
# softmax in fp32, so half precision saves less than half).
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2.75, "fp16": 2.75}
# The saved activations counted below times this: backward's transient buffers and what the
# allocator keeps between batches of different shapes (measured).
SLACK = 1.75


# What a loss that reads the teacher on every step adds (`TrainConfig.teacher_loss`), per token of a
# --max-tokens batch: per unit of the teacher's width, its no-grad forward's outputs and transients;
# per vocabulary entry, its logits ("states": the intermediate-state loss), and with the word-level KL
# term the masked copies of both distributions, their log-softmax and the KL's gradients ("kl").
# Fitted to the extra peak of TINY's phase 2 over the same run without the loss, from the bundled
# teacher (d 256, 8k pieces) and an opus-mt-shaped one (d 512, 58k), in fp32, which holds the
# teacher's logits at full width (benchmarks/memory_estimate.py; examples/results/memory-estimate/);
# "kl" raised to cover a batch whose every position is a target token (tests/test_opus_shape.py).
TEACHER_PASS_WIDTH_BYTES = 300
TEACHER_LOGIT_BYTES = {"states": 4.3, "kl": 14}


def teacher_pass_bytes(teacher_config, max_tokens: int, loss: str) -> int:
    """Estimated bytes a `loss` ("states" or "kl") that runs the teacher on each micro-batch of
    `max_tokens` tokens adds to a training phase's peak."""
    per_token = TEACHER_PASS_WIDTH_BYTES * teacher_config.d_model + TEACHER_LOGIT_BYTES[loss] * teacher_config.vocab_size
    return int(max_tokens * per_token)


def training_peak(config, max_tokens: int, precision: str = "fp32", **weights: int) -> dict[str, int]:
    """Estimated peak resident bytes of training a Marian model of `config` on micro-batches of
    `max_tokens` tokens (padded source or target, whichever is longer: the bound `train` packs
    to) in `precision` ("fp32", or "bf16"/"fp16" autocast), by component:

    - runtime: `RUNTIME_BYTES`;
    - `weights`: what the caller's phase holds, in bytes, by name (e.g. the frozen teacher; the
      trained parameters with their gradients and Adam's two moments);
    - autocast_weights: under autocast, a half-precision copy of every weight the model uses;
    - activations: per token, `LOGIT_BYTES` per vocabulary entry, plus what each layer saves for
      backward (width d, FFN f): an encoder layer q, k, v, the attention output and its copy
      (5d), two layer norms' inputs and outputs (4d), the FFN's hidden before and after the
      activation (2f) and two dropout masks (d/2); a decoder layer the same plus cross-attention
      (q, output and copy 3d, a layer norm 2d, a mask d/4, and k, v over the source 2d), all
      times `SLACK`, at `ACTIVATION_BYTES` per element.
    """
    d_enc, d_dec = config.d_model, getattr(config, "decoder_d_model", None) or config.d_model
    saved = (config.encoder_layers * (9.5 * d_enc + 2 * config.encoder_ffn_dim)
             + config.decoder_layers * (16.75 * d_dec + 2 * config.decoder_ffn_dim))
    per_token = LOGIT_BYTES * config.vocab_size + SLACK * ACTIVATION_BYTES[precision] * saved
    return {"runtime": RUNTIME_BYTES, **weights,
            "autocast_weights": 0 if precision == "fp32" else 2 * count_parameters(config),
            "activations": int(max_tokens * per_token)}

