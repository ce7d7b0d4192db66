"""Weight grouping: which teacher tensors feed which student tensor, and at what cost.

A `GroupPlan` is built from two configs only (models are instantiated on the meta device, so
an opus-mt-sized plan costs no weight memory). It fixes, for every student tensor:

- its *class* (parameter role: `decoder.self_attn.q_proj.weight`, `shared`, `lm_head`, ...),
- the *group* of teacher *instances* that feed it (for layer tensors: the block of adjacent
  teacher layers assigned to that student layer by `partition_layers`),
- the generator *form* and its trainable parameter count,
- the *subset* it is generated in (consecutive generators packed under a byte budget, so that
  phase 1 only ever holds one subset's intermediate products at a time).

Student tensors that are not generated are *constants*: the sinusoidal position tables (no
parameters in Marian; HF's MarianConfig has no learned-position option) come from the student
skeleton, and `final_logits_bias` (a zero buffer) is copied from the teacher.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
from transformers import MarianConfig, MarianMTModel

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.student import StudentSpec, check_teacher, validate

FP32_BYTES = 4
DEFAULT_SUBSET_BYTES = 256 * 2**20
SIDES = ("encoder", "decoder")

# Settings a student must share with its teacher for tensors to correspond one to one.
KEPT_SETTINGS = (
    "vocab_size",
    "decoder_vocab_size",
    "pad_token_id",
    "share_encoder_decoder_embeddings",
    "tie_word_embeddings",
    "max_position_embeddings",
)


def partition_layers(n_teacher: int, n_student: int) -> tuple[range, ...]:
    """Split teacher layers 0..n_teacher-1 into n_student contiguous, near-equal blocks.

    wdctl's choice (the release instead floors n_teacher/n_student and drops the top teacher
    layers): every teacher layer is used exactly once; when the split is uneven the *lower*
    blocks are the larger ones, e.g. 6→4 gives sizes 2,2,1,1 and 5→2 gives 3,2.
    """
    if not 0 < n_student <= n_teacher:
        raise InputError(f"cannot split {n_teacher} teacher layers into {n_student} student layers")
    size, extra = divmod(n_teacher, n_student)
    blocks, start = [], 0
    for i in range(n_student):
        stop = start + size + (1 if i < extra else 0)
        blocks.append(range(start, stop))
        start = stop
    return tuple(blocks)


def matrix_out_first(teacher_shape: tuple[int, ...], student_shape: tuple[int, ...]) -> bool:
    """Whether W_O^T·M·W_I is cheaper as (W_O^T·M)·W_I than as W_O^T·(M·W_I).

    Layer mixing always goes first (it removes the layer axis at the cost of one pass over the
    instances); only the order of the two projections depends on the shapes.
    """
    (o_t, i_t), (o_s, i_s) = teacher_shape, student_shape
    return o_t * i_t * o_s + o_s * i_t * i_s <= o_t * i_t * i_s + o_t * o_s * i_s


@dataclass(frozen=True)
class _FormCost:
    """Trainable parameters and no-grad working elements of one generator form.

    Both functions take (r, teacher_shape, student_shape).
    """

    params: Callable[[int, tuple[int, ...], tuple[int, ...]], int]
    work: Callable[[int, tuple[int, ...], tuple[int, ...]], int]


def _matrix_work(r: int, t: tuple[int, ...], s: tuple[int, ...]) -> int:
    middle = s[0] * t[1] if matrix_out_first(t, s) else t[0] * s[1]
    return t[0] * t[1] + middle + 2 * s[0] * s[1]


FORM_COSTS: dict[str, _FormCost] = {
    # S = W ⊙ tanh(T) + B
    "elementwise": _FormCost(
        params=lambda r, t, s: 2 * math.prod(s),
        work=lambda r, t, s: 2 * math.prod(s),
    ),
    # alpha = W_L·w; S = W ⊙ tanh(Σ alpha_l W_O^T T_l W_I) + B
    "matrix": _FormCost(
        params=lambda r, t, s: r * r + r + t[0] * s[0] + t[1] * s[1] + 2 * s[0] * s[1],
        work=_matrix_work,
    ),
    # s = W ⊙ tanh(Σ alpha_l W_O^T b_l) + B
    "vector": _FormCost(
        params=lambda r, t, s: r * r + r + t[0] * s[0] + 2 * s[0],
        work=lambda r, t, s: t[0] + 2 * s[0],
    ),
    # S = W ⊙ tanh(E_t·P) + B, P only when widths differ
    "embedding": _FormCost(
        params=lambda r, t, s: 2 * math.prod(s) + (t[1] * s[1] if t[1] != s[1] else 0),
        work=lambda r, t, s: 2 * math.prod(s) + (0 if t[1] != s[1] else math.prod(t)),
    ),
    # S = O_t·P_out
    "projection": _FormCost(
        params=lambda r, t, s: t[1] * s[1],
        work=lambda r, t, s: math.prod(s),
    ),
}


@dataclass(frozen=True)
class GeneratorEntry:
    """One generator: the student tensor it writes and the teacher instances it reads.

    `name` is the student state-dict key; `aliases` are further keys tied to the same tensor
    (e.g. `lm_head.weight` with tied embeddings). `teacher_names` are in layer order, so the
    first one is the bottom layer of the group (what the cut-off baseline copies).
    """

    name: str
    aliases: tuple[str, ...]
    role: str
    student_layer: int | None
    teacher_names: tuple[str, ...]
    teacher_shape: tuple[int, ...]
    student_shape: tuple[int, ...]
    form: str
    pad_row: int | None = None

    @property
    def ratio(self) -> int:
        return len(self.teacher_names)

    @property
    def params(self) -> int:
        return FORM_COSTS[self.form].params(self.ratio, self.teacher_shape, self.student_shape)

    @property
    def param_bytes(self) -> int:
        return self.params * FP32_BYTES

    @property
    def teacher_bytes(self) -> int:
        return self.ratio * math.prod(self.teacher_shape) * FP32_BYTES

    @property
    def student_bytes(self) -> int:
        return math.prod(self.student_shape) * FP32_BYTES

    @property
    def work_bytes(self) -> int:
        """Transient tensors made while applying this generator once without autograd."""
        return FORM_COSTS[self.form].work(self.ratio, self.teacher_shape, self.student_shape) * FP32_BYTES

    def to_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "teacher_shape": list(self.teacher_shape),
            "student_shape": list(self.student_shape),
            "aliases": list(self.aliases),
            "teacher_names": list(self.teacher_names),
            "params": self.params,
            "param_bytes": self.param_bytes,
            "teacher_bytes": self.teacher_bytes,
            "work_bytes": self.work_bytes,
        }


@dataclass(frozen=True)
class ConstantEntry:
    """A student tensor that is not generated: `source` is "skeleton" (computed by the student
    model itself: sinusoidal positions) or "teacher" (copied: final_logits_bias)."""

    name: str
    source: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "source": self.source, "shape": list(self.shape)}


@dataclass(frozen=True)
class _Tensor:
    """A student state-dict tensor, with the other keys tied to it."""

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]


def _layout(config: MarianConfig) -> list[_Tensor]:
    """State-dict tensors of `MarianMTModel(config)` in order, tied keys folded together."""
    with torch.device("meta"):
        model = MarianMTModel(config)
    owner: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = owner.setdefault(id(param), name)
        aliases.setdefault(first, [])
        if first != name:
            aliases[first].append(name)
    tied = {a for names in aliases.values() for a in names}
    return [
        _Tensor(name, tuple(aliases.get(name, ())), tuple(t.shape))
        for name, t in model.state_dict().items()
        if name not in tied
    ]


_LAYER = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)")
_POSITIONS = re.compile(r"model\.(encoder|decoder)\.embed_positions\.weight")
_EMBEDDING = re.compile(r"model\.(?:shared|(encoder|decoder)\.embed_tokens)\.weight")


class _Builder:
    """Turns each student tensor into a generator entry or a constant (see `_RULES`)."""

    def __init__(self, teacher_config: MarianConfig, student_config: MarianConfig):
        self.teacher = {t.name: t.shape for t in _layout(teacher_config)}
        self.groups = {
            side: partition_layers(getattr(teacher_config, f"{side}_layers"), getattr(student_config, f"{side}_layers"))
            for side in SIDES
        }
        self.pad = student_config.pad_token_id

    def teacher_shape(self, names: tuple[str, ...]) -> tuple[int, ...]:
        missing = [n for n in names if n not in self.teacher]
        if missing:
            raise WdctlError(f"teacher layout has no tensor {missing[0]} (unexpected Marian layout)")
        return self.teacher[names[0]]

    def layer(self, t: _Tensor, m: re.Match) -> GeneratorEntry:
        side, index, suffix = m.group(1), int(m.group(2)), m.group(3)
        names = tuple(f"model.{side}.layers.{l}.{suffix}" for l in self.groups[side][index])
        shape = self.teacher_shape(names)
        if len(names) == 1 and shape == t.shape:
            form = "elementwise"
        else:
            form = {2: "matrix", 1: "vector"}[len(shape)]
        return GeneratorEntry(t.name, t.aliases, f"{side}.{suffix}", index, names, shape, t.shape, form)

    def embedding(self, t: _Tensor, m: re.Match) -> GeneratorEntry:
        role = "shared" if m.group(1) is None else f"{m.group(1)}.embed_tokens"
        shape = self.teacher_shape((t.name,))
        return GeneratorEntry(t.name, t.aliases, role, None, (t.name,), shape, t.shape, "embedding", self.pad)

    def projection(self, t: _Tensor, m: re.Match) -> GeneratorEntry:
        shape = self.teacher_shape((t.name,))
        return GeneratorEntry(t.name, t.aliases, "lm_head", None, (t.name,), shape, t.shape, "projection")

    def from_skeleton(self, t: _Tensor, m: re.Match) -> ConstantEntry:
        return ConstantEntry(t.name, "skeleton", t.shape)

    def from_teacher(self, t: _Tensor, m: re.Match) -> ConstantEntry:
        if self.teacher_shape((t.name,)) != t.shape:
            raise WdctlError(f"teacher and student {t.name} differ in shape")
        return ConstantEntry(t.name, "teacher", t.shape)


_RULES: tuple[tuple[re.Pattern, Callable[[_Builder, _Tensor, re.Match], GeneratorEntry | ConstantEntry]], ...] = (
    (_LAYER, _Builder.layer),
    (_EMBEDDING, _Builder.embedding),
    (re.compile(r"lm_head\.weight"), _Builder.projection),
    (_POSITIONS, _Builder.from_skeleton),
    (re.compile(r"final_logits_bias"), _Builder.from_teacher),
)


def _classify(builder: _Builder, t: _Tensor) -> GeneratorEntry | ConstantEntry:
    for pattern, rule in _RULES:
        m = pattern.fullmatch(t.name)
        if m:
            return rule(builder, t, m)
    raise WdctlError(f"no weight-distillation rule for student tensor {t.name} (unexpected Marian layout)")


def _pack(entries: list[GeneratorEntry], budget: int) -> tuple[tuple[int, ...], ...]:
    """Consecutive entries whose generator+teacher bytes fit `budget`; a larger entry
    gets a subset of its own."""
    subsets: list[list[int]] = []
    used = budget + 1
    for i, e in enumerate(entries):
        size = e.param_bytes + e.teacher_bytes
        if used + size > budget:
            subsets.append([])
            used = 0
        subsets[-1].append(i)
        used += size
    return tuple(tuple(s) for s in subsets)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def _fmt_group(layers: range) -> str:
    return str(layers[0]) if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"


@dataclass(frozen=True)
class GroupPlan:
    """Everything phase 1 needs to know before touching a weight."""

    teacher_config: MarianConfig
    student_config: MarianConfig
    groups: dict[str, tuple[range, ...]]
    entries: tuple[GeneratorEntry, ...]
    constants: tuple[ConstantEntry, ...]
    subsets: tuple[tuple[int, ...], ...]
    subset_bytes: int

    @classmethod
    def build(
        cls, teacher_config: MarianConfig, student_config: MarianConfig, subset_bytes: int = DEFAULT_SUBSET_BYTES
    ) -> GroupPlan:
        check_teacher(teacher_config)
        check_teacher(student_config)
        validate(StudentSpec.from_config(student_config), teacher_config)
        for name in KEPT_SETTINGS:
            if getattr(teacher_config, name, None) != getattr(student_config, name, None):
                raise InputError(
                    f"student {name}={getattr(student_config, name, None)!r} differs from the teacher's "
                    f"{getattr(teacher_config, name, None)!r}; build the student config with student_config()"
                )
        if subset_bytes <= 0:
            raise InputError(f"subset_bytes must be positive, got {subset_bytes}")
        builder = _Builder(teacher_config, student_config)
        entries, constants = [], []
        for t in _layout(student_config):
            item = _classify(builder, t)
            (entries if isinstance(item, GeneratorEntry) else constants).append(item)
        return cls(
            teacher_config=teacher_config,
            student_config=student_config,
            groups=builder.groups,
            entries=tuple(entries),
            constants=tuple(constants),
            subsets=_pack(entries, subset_bytes),
            subset_bytes=subset_bytes,
        )

    @property
    def total_generator_params(self) -> int:
        return sum(e.params for e in self.entries)

    @property
    def total_generator_bytes(self) -> int:
        return sum(e.param_bytes for e in self.entries)

    def check_teacher_state(self, teacher_state: Mapping[str, torch.Tensor]) -> None:
        """Every teacher tensor the plan reads must be present with the planned shape."""
        wanted = [(n, e.teacher_shape) for e in self.entries for n in e.teacher_names]
        wanted += [(c.name, c.shape) for c in self.constants if c.source == "teacher"]
        for name, shape in wanted:
            if name not in teacher_state:
                raise InputError(f"teacher weights lack {name}")
            if tuple(teacher_state[name].shape) != shape:
                raise InputError(
                    f"teacher weight {name} has shape {_fmt_shape(tuple(teacher_state[name].shape))}, "
                    f"the teacher config implies {_fmt_shape(shape)}"
                )

    def subset_entries(self, index: int) -> list[GeneratorEntry]:
        return [self.entries[i] for i in self.subsets[index]]

    def phase1_memory(self) -> dict[str, int]:
        """Estimated phase-1 bytes by component (fp32; excludes the student's activations,
        which depend on the batch)."""
        generator = self.total_generator_bytes
        student = sum(e.student_bytes for e in self.entries) + sum(
            math.prod(c.shape) * FP32_BYTES for c in self.constants
        )
        return {
            "teacher": sum(e.teacher_bytes for e in self.entries),
            "generator": generator,
            "adam_state": 2 * generator,
            "generator_grads": generator,
            "student": student,
            "student_grads": sum(e.student_bytes for e in self.entries),
            # one subset recomputed under checkpoint in backward, with the gradients of its intermediates
            "subset_work": 2 * max(sum(self.entries[i].work_bytes for i in s) for s in self.subsets),
        }

    def estimate_phase1_bytes(self) -> int:
        return sum(self.phase1_memory().values())

    def _class_rows(self) -> list[tuple[str, ...]]:
        by_role: dict[str, list[GeneratorEntry]] = {}
        for e in self.entries:
            by_role.setdefault(e.role, []).append(e)
        rows = []
        for role, es in by_role.items():
            side = role.split(".")[0]
            groups = (
                " ".join(_fmt_group(self.groups[side][e.student_layer]) for e in es)
                if es[0].student_layer is not None
                else "-"
            )
            rows.append((
                role,
                str(sum(e.ratio for e in es)),
                groups,
                _fmt_shape(es[0].teacher_shape),
                _fmt_shape(es[0].student_shape),
                "/".join(sorted({e.form for e in es})),
                f"{sum(e.params for e in es):,}",
            ))
        return rows

    def format(self) -> str:
        """A readable table, one row per class, with totals and the phase-1 memory estimate."""
        teacher = StudentSpec.from_config(self.teacher_config)
        student = StudentSpec.from_config(self.student_config)
        header = ("class", "instances", "groups (teacher layers)", "teacher", "student", "form", "params")
        rows = [header, *self._class_rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            "teacher " + " ".join(f"{k}={v}" for k, v in teacher.to_dict().items()),
            "student " + " ".join(f"{k}={v}" for k, v in student.to_dict().items()),
            "",
        ]
        for r in rows:
            lines.append("  ".join(
                c.rjust(w) if i in (1, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))
            ).rstrip())
        memory = self.phase1_memory()
        lines += [
            "",
            f"generators: {len(self.entries)} in {len(self.subsets)} subset(s) of <= "
            f"{_fmt_bytes(self.subset_bytes)}",
            f"generator parameters: {self.total_generator_params:,} ({_fmt_bytes(self.total_generator_bytes)})",
            "constants: " + (", ".join(f"{c.name} ({c.source})" for c in self.constants) or "none"),
            f"phase-1 memory estimate: {_fmt_bytes(self.estimate_phase1_bytes())} = "
            + " + ".join(f"{k} {_fmt_bytes(v)}" for k, v in memory.items()),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        """JSON-serializable summary of the plan."""
        return {
            "teacher": StudentSpec.from_config(self.teacher_config).to_dict(),
            "student": StudentSpec.from_config(self.student_config).to_dict(),
            "groups": {side: [list(block) for block in blocks] for side, blocks in self.groups.items()},
            "generators": [e.to_dict() for e in self.entries],
            "constants": [c.to_dict() for c in self.constants],
            "subset_bytes": self.subset_bytes,
            "subsets": [[self.entries[i].name for i in s] for s in self.subsets],
            "total_generator_params": self.total_generator_params,
            "total_generator_bytes": self.total_generator_bytes,
            "phase1_memory": self.phase1_memory(),
            "phase1_bytes": self.estimate_phase1_bytes(),
        }
