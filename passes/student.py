"""Student shapes: what a Weight Distillation student looks like relative to its teacher.

A `StudentSpec` is the handful of numbers that fix a Marian student's shape. It comes from a
named preset (`STUDENT_PRESETS`), from a dict (YAML config / CLI flags; unset fields keep the
teacher's value) or is given directly; `resolve_student` turns any of these into a spec that
has been checked against the teacher, and `student_config` turns it into a `MarianConfig`
(a `NarrowMarianConfig` when the decoder is narrower than the encoder, as in the paper's TINY).

Presets (the method spec, section 2c):
- `small`: the paper's SMALL, the teacher's encoder and width with a 2-layer decoder;
- `tiny`: the paper's TINY, the teacher's encoder unchanged, a 1-layer decoder of half width,
  half FFN and half the heads (a `NarrowMarianMTModel`, see `wdctl.passes.narrow_marian`);
- `halved`: every width halved (embeddings, encoder, decoder) with a 1-layer decoder: about a
  quarter of the teacher, far smaller than the paper's TINY (wdctl's former `tiny`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace

from transformers import MarianConfig

from wdctl.core.errors import InputError
from wdctl.passes.narrow_marian import NarrowMarianConfig, count_parameters, is_narrow, vocabulary_parameters

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
    # The decoder's width when it differs from `d_model` (which is then the encoder's width);
    # None (and a value equal to d_model, which is normalised to None) means one width.
    decoder_d_model: int | None = None

    def __post_init__(self) -> None:
        if self.decoder_d_model is not None and self.decoder_d_model == self.d_model:
            object.__setattr__(self, "decoder_d_model", None)
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "decoder_d_model":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"student {f.name} must be an integer, got {value!r}")
            if value <= 0:
                raise InputError(f"student {f.name} must be positive, got {value}")
        for side, width, name in (("encoder", self.d_model, "d_model"),
                                  ("decoder", self.decoder_width, "decoder_d_model" if self.narrow else "d_model")):
            heads = getattr(self, f"{side}_attention_heads")
            if width % heads:
                raise InputError(f"student {side}_attention_heads={heads} does not divide {name}={width}")

    @property
    def narrow(self) -> bool:
        """Whether the decoder is narrower (or wider) than the encoder: a NarrowMarianMTModel."""
        return self.decoder_d_model is not None

    @property
    def decoder_width(self) -> int:
        return self.decoder_d_model if self.decoder_d_model is not None else self.d_model

    @classmethod
    def from_config(cls, config: MarianConfig) -> StudentSpec:
        """The shape of an existing model (teacher or student)."""
        return cls(**{f.name: getattr(config, f.name, None) for f in fields(cls)})

    def to_dict(self) -> dict[str, int]:
        """The shape as a dict; `decoder_d_model` only when the decoder has its own width."""
        values = asdict(self)
        if values["decoder_d_model"] is None:
            del values["decoder_d_model"]
        return values


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
    """The paper's TINY: the teacher's encoder unchanged, a 1-layer decoder of half width, half
    FFN and half the heads (narrower than the encoder: a NarrowMarianMTModel)."""
    width = max(1, teacher.decoder_width // 2)
    if width == teacher.d_model:  # a width-1 teacher cannot be halved
        return replace(teacher, decoder_layers=1)
    return replace(
        teacher,
        decoder_layers=1,
        decoder_d_model=width,
        decoder_ffn_dim=max(1, teacher.decoder_ffn_dim // 2),
        decoder_attention_heads=_halve_heads(teacher.decoder_attention_heads, width),
    )


def _halved(teacher: StudentSpec) -> StudentSpec:
    """Every width halved (one Marian `d_model`): width, FFNs and heads of both sides, with the
    encoder's depth and a 1-layer decoder. About a quarter of the teacher, much smaller than
    the paper's TINY (which halves only the decoder)."""
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
    "halved": _halved,
}


def check_student_config(config: object) -> None:
    """A student config is a MarianConfig, or wdctl's NarrowMarianConfig."""
    if is_narrow(config) and isinstance(config, NarrowMarianConfig):
        return
    check_teacher(config)


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
    if spec.decoder_width > teacher.d_model:
        raise InputError(
            f"student decoder_d_model={spec.decoder_width} exceeds the teacher's "
            f"{teacher.d_model}: a student may not be wider than its teacher"
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
    ids, activation, embedding scale, positions, tie settings) is kept as is.

    A student whose decoder has its own width gets a `NarrowMarianConfig` (separate encoder and
    decoder embeddings; the decoder's is tied to the output layer when the teacher ties)."""
    validate(spec, teacher_config)
    if spec.narrow:
        config = NarrowMarianConfig.from_marian(teacher_config, spec.decoder_d_model)
    else:
        config = copy.deepcopy(teacher_config)
    for name, value in spec.to_dict().items():
        setattr(config, name, value)
    config.num_hidden_layers = spec.encoder_layers
    return config


# The presets from the largest name to the smallest, each with the largest fraction of its teacher
# that its name stands for: SMALL drops most decoder layers, TINY also halves the decoder's width,
# halved halves every width (about a quarter).
PRESET_FRACTIONS: dict[str, float] = {"small": 0.8, "tiny": 0.75, "halved": 0.4}


def size_note(preset: str, teacher_config: MarianConfig) -> str | None:
    """One line on why the `preset` student of this teacher is a larger fraction of it than the
    name suggests (above `PRESET_FRACTIONS`, or larger than a preset named larger), or None.

    The cause is the vocabulary: no preset shrinks the embedding tables, and TINY's narrower
    decoder has an embedding of its own (untied from the encoder's), so with a large vocabulary
    (OPUS-MT: 58,101 pieces) TINY outgrows SMALL."""
    if preset not in PRESET_FRACTIONS:
        return None
    teacher = count_parameters(teacher_config)
    configs = {name: student_config(teacher_config, resolve_student(name, teacher_config)) for name in PRESET_FRACTIONS}
    sizes = {name: count_parameters(c) for name, c in configs.items()}
    names = list(PRESET_FRACTIONS)
    larger = [n for n in names[: names.index(preset)] if sizes[n] < sizes[preset]]
    fraction = sizes[preset] / teacher
    if fraction <= PRESET_FRACTIONS[preset] and not larger:
        return None
    config = configs[preset]
    vocab = vocabulary_parameters(config)
    than = "".join(f", more than {n} ({sizes[n] / teacher:.2f})" for n in larger)
    why = (f"{vocab / 1e6:.1f} M of its {sizes[preset] / 1e6:.1f} M parameters are vocabulary tables "
           f"({config.vocab_size:,} pieces), which {preset} does not shrink")
    if is_narrow(config):
        why += (f", and its narrower decoder has an embedding of its own ({config.vocab_size:,} x "
                f"{config.decoder_d_model}, untied from the encoder's {config.d_model}-wide one)")
    smaller = [n for n in names[names.index(preset) + 1:] if sizes[n] < sizes[preset]]
    hint = f"; --student {smaller[0]} is {sizes[smaller[0]] / teacher:.2f}" if smaller else ""
    return f"note: {preset} is {fraction:.2f} of the teacher{than}: {why}{hint}"
