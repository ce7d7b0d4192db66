"""Teacher architecture presets: plain data, free of torch and transformers, so the CLI can
show them in `wdctl teacher train --help` without importing either (`passes/marian.py` builds
the MarianConfig from them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherPreset:
    layers: int
    d_model: int
    ffn_dim: int
    heads: int
    vocab_size: int
    dropout: float
    help: str


TEACHER_PRESETS: dict[str, TeacherPreset] = {
    "base": TeacherPreset(6, 512, 2048, 8, 32000, 0.1, "Transformer-base: 6+6 layers, d 512, FFN 2048, 8 heads"),
    "cpu6": TeacherPreset(6, 256, 1024, 4, 8000, 0.1, "the bundled teacher's shape: 6+6 layers, d 256, FFN 1024, 4 heads, 8k vocab"),
    "cpu": TeacherPreset(3, 256, 1024, 4, 8000, 0.1, "CPU-friendly: 3+3 layers, d 256, FFN 1024, 4 heads, 8k vocab"),
    "tiny": TeacherPreset(2, 64, 128, 2, 1000, 0.0, "for tests: 2+2 layers, d 64, FFN 128, 2 heads"),
}


def describe_presets() -> str:
    return "; ".join(f"{name}: {p.help}" for name, p in TEACHER_PRESETS.items())
