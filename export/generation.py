"""The parts of a package's generation config that decoding needs, read once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from wdctl.core.errors import InputError


def _as_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


@dataclass(frozen=True)
class GenerationSettings:
    """The parts of a generation config that decoding needs (from generation_config.json)."""

    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    forced_eos_token_ids: tuple[int, ...] = ()
    min_length: int = 0
    vocab_size: int = 0
    single_bad: tuple[int, ...] = field(init=False, default=())
    multi_bad: tuple[tuple[int, ...], ...] = field(init=False, default=())

    def __post_init__(self):
        object.__setattr__(self, "single_bad", tuple(s[0] for s in self.bad_words_ids if len(s) == 1))
        object.__setattr__(self, "multi_bad", tuple(s for s in self.bad_words_ids if len(s) > 1))

    @classmethod
    def from_package(cls, package: Path) -> "GenerationSettings":
        config = _read_json(package / "config.json")
        gen_path = package / "generation_config.json"
        gen = _read_json(gen_path) if gen_path.is_file() else {}

        def pick(key, default=None):
            value = gen.get(key)
            return config.get(key, default) if value is None else value

        start, eos, pad = pick("decoder_start_token_id"), pick("eos_token_id"), pick("pad_token_id")
        if start is None or eos is None:
            raise InputError(f"{package / 'config.json'}: no decoder_start_token_id / eos_token_id")
        bad = tuple(tuple(int(t) for t in seq) for seq in (pick("bad_words_ids") or ()))
        eos_ids = _as_tuple(eos)
        return cls(
            decoder_start_token_id=int(start),
            eos_token_ids=eos_ids,
            pad_token_id=int(pad) if pad is not None else eos_ids[0],
            bad_words_ids=bad,
            forced_eos_token_ids=_as_tuple(pick("forced_eos_token_id")),
            min_length=int(pick("min_length", 0) or 0),
            vocab_size=int(config.get("vocab_size", 0)),
        )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path}: not found (is this a package written by `wdctl export`?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable JSON ({str(exc).splitlines()[0]})") from None
