"""benchmarks/encoder_collapse.py: the spread across positions tells a healthy encoder from a
collapsed one (the diagnosis of TINY kd at peak lr 1.2e-3)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from wdctl.passes.marian import load_marian
from wdctl.passes.narrow_marian import build_model


def _module():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "encoder_collapse.py"
    spec = importlib.util.spec_from_file_location("encoder_collapse", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_spread_falls_to_zero_when_every_position_gets_the_same_vector(tiny_teacher_dir):
    position_spread = _module().position_spread
    trained, tokenizer = load_marian(tiny_teacher_dir)
    torch.manual_seed(0)
    model = build_model(trained.config).eval()  # untrained: a few steps already start the collapse
    batch = tokenizer(["In the beginning God created the heaven.", "And the earth was without form"],
                      return_tensors="pt", padding=True)
    healthy = position_spread(model, batch)
    assert len(healthy) == model.config.encoder_layers + 1 and min(healthy[1:]) > 0.1

    with torch.no_grad():  # the last layer's FFN outputs one large vector, whatever its input
        last = model.model.encoder.layers[-1]
        last.fc2.weight.zero_()
        last.fc2.bias.copy_(1e4 * torch.randn_like(last.fc2.bias))
    collapsed = position_spread(model, batch)
    assert collapsed[:-1] == healthy[:-1] and collapsed[-1] < 1e-2
