"""Student shapes: what a Weight Distillation student looks like relative to its teacher.

A `StudentSpec` is the handful of numbers that fix a Marian student's shape. It comes from a
named preset (`STUDENT_PRESETS`), from a dict (YAML config / CLI flags; unset fields keep the
teacher's value) or is given directly; `resolve_student` turns any of these into a spec that
has been checked against the teacher, and `student_config` turns it into a `MarianConfig`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace

from transformers import MarianConfig

from wdctl.core.errors import InputError

SUPPORTED_MODEL_TYPE = "marian"


@dataclass(frozen=True)
class StudentSpec:
    """The shape of a Marian model; checks its own consistency on construction."""

    encoder_layers: int
    decoder_layers: int
    d_model: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    encoder_attention_heads: int
    decoder_attention_heads: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"student {f.name} must be an integer, got {value!r}")
            if value <= 0:
                raise InputError(f"student {f.name} must be positive, got {value}")
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise InputError(
                    f"student {side}_attention_heads={heads} does not divide d_model={self.d_model}"
                )

    @classmethod
    def from_config(cls, config: MarianConfig) -> StudentSpec:
        """The shape of an existing model (teacher or student)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _small(teacher: StudentSpec) -> StudentSpec:
    """The paper's SMALL: the teacher's encoder and width, a 2-layer decoder (fewer only if
    the teacher itself has fewer)."""
    return replace(teacher, decoder_layers=min(2, teacher.decoder_layers))


def _halve_heads(heads: int, d_model: int) -> int:
    """Half the heads, at least 1, lowered until it divides the (halved) width."""
    h = max(1, heads // 2)
    while d_model % h:
        h -= 1
    return h


def _tiny(teacher: StudentSpec) -> StudentSpec:
    """Closest to the paper's TINY that one Marian `d_model` can hold.

    The paper halves only the decoder's width; a MarianConfig has a single d_model, so wdctl
    halves everything (width, FFNs, heads) and keeps the encoder depth with a 1-layer decoder.
    This is about a quarter of the teacher, much smaller than the paper's TINY.
    """
    d_model = max(1, teacher.d_model // 2)
    return StudentSpec(
        encoder_layers=teacher.encoder_layers,
        decoder_layers=1,
        d_model=d_model,
        encoder_ffn_dim=max(1, teacher.encoder_ffn_dim // 2),
        decoder_ffn_dim=max(1, teacher.decoder_ffn_dim // 2),
        encoder_attention_heads=_halve_heads(teacher.encoder_attention_heads, d_model),
        decoder_attention_heads=_halve_heads(teacher.decoder_attention_heads, d_model),
    )


STUDENT_PRESETS: dict[str, Callable[[StudentSpec], StudentSpec]] = {
    "small": _small,
    "tiny": _tiny,
}


def check_teacher(teacher_config: object) -> None:
    """Only Marian teachers are supported: the groups and generators follow its layout."""
    model_type = getattr(teacher_config, "model_type", None)
    if not isinstance(teacher_config, MarianConfig) or model_type != SUPPORTED_MODEL_TYPE:
        raise InputError(
            f"unsupported teacher model type {model_type!r}: wdctl supports only "
            f"'{SUPPORTED_MODEL_TYPE}' (MarianMTModel) teachers"
        )


def validate(spec: StudentSpec, teacher_config: MarianConfig) -> None:
    """Reject students that WD cannot produce from this teacher (deeper or wider than it)."""
    check_teacher(teacher_config)
    teacher = StudentSpec.from_config(teacher_config)
    for name in ("encoder_layers", "decoder_layers"):
        if getattr(spec, name) > getattr(teacher, name):
            raise InputError(
                f"student {name}={getattr(spec, name)} exceeds the teacher's "
                f"{getattr(teacher, name)}: a student may not have more layers than its teacher"
            )
    for name in ("d_model", "encoder_ffn_dim", "decoder_ffn_dim"):
        if getattr(spec, name) > getattr(teacher, name):
            raise InputError(
                f"student {name}={getattr(spec, name)} exceeds the teacher's "
                f"{getattr(teacher, name)}: a student may not be wider than its teacher"
            )


def _from_dict(values: Mapping[str, object], teacher: StudentSpec) -> StudentSpec:
    """A dict may name a `preset` to start from; other keys override it, None means unset."""
    known = {f.name for f in fields(StudentSpec)} | {"preset"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(
            f"unknown student field(s) {', '.join(unknown)}; expected {', '.join(sorted(known))}"
        )
    preset = values.get("preset")
    base = _from_preset(preset, teacher) if preset is not None else teacher
    overrides = {k: v for k, v in values.items() if k != "preset" and v is not None}
    return replace(base, **overrides)


def _from_preset(name: object, teacher: StudentSpec) -> StudentSpec:
    if name not in STUDENT_PRESETS:
        raise InputError(
            f"unknown student preset {name!r}; choose one of {', '.join(sorted(STUDENT_PRESETS))}"
        )
    return STUDENT_PRESETS[name](teacher)


def resolve_student(
    spec_or_preset: str | Mapping[str, object] | StudentSpec, teacher_config: MarianConfig
) -> StudentSpec:
    """Any way of naming a student → a spec validated against `teacher_config`."""
    check_teacher(teacher_config)
    teacher = StudentSpec.from_config(teacher_config)
    if isinstance(spec_or_preset, StudentSpec):
        spec = spec_or_preset
    elif isinstance(spec_or_preset, str):
        spec = _from_preset(spec_or_preset, teacher)
    elif isinstance(spec_or_preset, Mapping):
        spec = _from_dict(spec_or_preset, teacher)
    else:
        raise InputError(
            f"student must be a preset name, a mapping or a StudentSpec, got {type(spec_or_preset).__name__}"
        )
    validate(spec, teacher_config)
    return spec


def student_config(teacher_config: MarianConfig, spec: StudentSpec) -> MarianConfig:
    """The teacher's config with the student's shape; everything else (vocabulary, special
    ids, activation, embedding scale, positions, tie settings) is kept as is."""
    validate(spec, teacher_config)
    config = copy.deepcopy(teacher_config)
    for name, value in spec.to_dict().items():
        setattr(config, name, value)
    config.num_hidden_layers = spec.encoder_layers
    return config
