"""Configs validated once, at the edge: YAML files and CLI flags become dataclasses here."""

from __future__ import annotations

import dataclasses
import os
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


# CPU-sized defaults. The release uses peak lr 7e-4 with warm-up 4000 (phase 1) and 1000
# (phase 2) on GPU-sized batches; on a 2-core CPU wdctl keeps the lr with short warm-ups.
# Pass --phase1-warmup 4000 --phase2-warmup 1000 for the paper's.
# The budget is the plateau runs' (examples/results/plateau): a short phase 1 (300 steps, warm-up
# 50) gives the generator's head start over the cut (dev BLEU +1.0 for SMALL, +5.0 for TINY at
# 250 steps; a phase-1 step costs 1.1-1.5 phase-2 steps), then phase 2 trains until dev BLEU
# gains no more than 0.2 over 4 evaluations 250 steps apart (6,000 steps at most: SMALL stopped
# at 2,500, within 0.5 BLEU of the teacher; TINY at 5,000). kd and cut-kd train their whole
# budget (phase 1's rule) unless a --config sets phase1's plateau_patience.
DEFAULT_PHASE1 = TrainConfig(max_steps=300, max_tokens=2500, lr=7e-4, warmup=50, eval_every=250,
                             save_every=100, log_every=20, precision="auto")
DEFAULT_PHASE2 = TrainConfig(max_steps=6000, max_tokens=2500, lr=7e-4, warmup=100, eval_every=250,
                             save_every=100, log_every=20, precision="auto", plateau_patience=4)
# kd trains from random weights, so its one schedule (phase 1's, over both budgets) is a
# from-scratch one: the bundled teacher's warm-up of 1,000 and clipping at 1.0, at the peak lr the
# other methods use. On phase 1's warm-up of 50 SMALL kd stayed at 1-2 dev BLEU for 2,000 steps;
# at the teacher's peak of 1.2e-3 (on which SMALL kd trained well) TINY kd's encoder collapsed
# and never passed 2 dev BLEU, at 7e-4 it trains (examples/results/plateau).
DEFAULT_KD = dataclasses.replace(DEFAULT_PHASE1, warmup=1000, clip_norm=1.0)
METHOD_PHASE1 = {"kd": DEFAULT_KD}  # a method's own phase-1 default; the others' is DEFAULT_PHASE1
PHASES = ("phase1", "phase2")


def default_phases(method: str) -> tuple[TrainConfig, TrainConfig]:
    """The default schedules of `method` (before --config and flags apply)."""
    return METHOD_PHASE1.get(method, DEFAULT_PHASE1), DEFAULT_PHASE2


def default_cache_dir() -> Path:
    """Where distilled data is cached: $WDCTL_CACHE_DIR, else $XDG_CACHE_HOME/wdctl, else ~/.cache/wdctl."""
    root = os.environ.get("WDCTL_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wdctl"
    return Path(root) / "distilled"


def phase_configs(options: dict | None = None, base: tuple[TrainConfig, TrainConfig] = (DEFAULT_PHASE1, DEFAULT_PHASE2)
                  ) -> tuple[TrainConfig, TrainConfig]:
    """Phase schedules from a mapping: TrainConfig keys at the top level apply to both phases,
    `phase1:`/`phase2:` sections to one (and win). This is also the `--config` YAML layout."""
    options = dict(options or {})
    sections = {name: options.pop(name, None) or {} for name in PHASES}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise InputError(f"training options: '{name}' must be a mapping of option: value")
    out = []
    for name, cfg in zip(PHASES, base):
        cfg = train_config(cfg, options, "training options")
        out.append(train_config(cfg, sections[name], f"training options, {name}"))
    return out[0], out[1]
