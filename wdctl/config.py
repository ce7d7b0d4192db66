"""Configs validated once, at the edge: YAML files and CLI flags become dataclasses here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from wdctl.core.errors import InputError
from wdctl.passes.training import TrainConfig

# Training schedules that go with each teacher preset (flags and --config override them).
TEACHER_SCHEDULES: dict[str, TrainConfig] = {
    "tiny": TrainConfig(max_steps=200, max_tokens=1024, lr=3e-3, warmup=50, eval_every=100,
                        save_every=100, log_every=10),
    "cpu": TrainConfig(max_steps=100_000, max_minutes=55, max_tokens=2500, lr=1.5e-3, warmup=800,
                       eval_every=1000, save_every=150, average_last=5, clip_norm=1.0),
    "cpu6": TrainConfig(max_steps=100_000, max_minutes=150, max_tokens=2500, lr=1.2e-3, warmup=1000,
                        eval_every=500, save_every=150, average_last=5, clip_norm=1.0),
    "base": TrainConfig(max_steps=100_000, max_tokens=8192, accum=4, lr=7e-4, warmup=4000,
                        eval_every=2000, save_every=1000, average_last=5),
}


def read_yaml(path: Path | str | None) -> dict:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of option: value at the top level")
    return data


def train_config(base: TrainConfig, overrides: dict, where: str = "training options") -> TrainConfig:
    """`base` with `overrides` applied (unset values, i.e. None, are skipped), validated."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise InputError(f"{where}: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(fields))})")
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return dataclasses.replace(base, **clean).validate()
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None
