"""The coherent generator's spaces and every student tensor's generator entry (or constant):
the per-tensor half of `wdctl.passes.grouping`'s plan (see its docstring for the forms).

`_Builder` walks the student's state dict (`_layout`, on the meta device) and classifies each
tensor (`_RULES`): layer tensors get the block of teacher layers `partition_layers` assigns
them, the coherent form assigns their projections to shared `Space`s, and `FORM_COSTS` counts
each form's trainable parameters and working memory. `GroupPlan.build` packs the entries into
subsets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from transformers import MarianConfig

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.narrow_marian import build_model, is_narrow

FP32_BYTES = 4
SIDES = ("encoder", "decoder")


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
    # coherent forms: the projections are the plan's shared spaces (counted there)
    # S = W ⊙ tanh(Σ alpha_l P_out^T T_l P_in) + B
    "shared-matrix": _FormCost(
        params=lambda r, t, s: r * r + r + 2 * math.prod(s),
        work=_matrix_work,
    ),
    # s = W ⊙ tanh(Σ alpha_l P_out^T b_l) + B
    "shared-vector": _FormCost(
        params=lambda r, t, s: r * r + r + 2 * s[0],
        work=lambda r, t, s: t[0] + 2 * s[0],
    ),
    # S = W ⊙ tanh(c·E_t·P) + B (per-token W, B)
    "shared-embedding": _FormCost(
        params=lambda r, t, s: 2 * math.prod(s),
        work=lambda r, t, s: 3 * math.prod(s),
    ),
    # S = W ⊙ tanh(O_t·P) + B (untied output layer)
    "shared-projection": _FormCost(
        params=lambda r, t, s: 2 * math.prod(s),
        work=lambda r, t, s: 3 * math.prod(s),
    ),
    # S = pos_t·P (no parameters of its own)
    "positions": _FormCost(
        params=lambda r, t, s: 0,
        work=lambda r, t, s: math.prod(s),
    ),
}


@dataclass(frozen=True)
class Space:
    """A coordinate space of the coherent generator: the teacher's and the student's width.

    `heads` is (teacher heads, student heads) for attention spaces. A space whose widths are
    equal is the identity (no parameters); otherwise one `teacher_dim × student_dim` projection
    serves every tensor that reads or writes the space.
    """

    name: str
    teacher_dim: int
    student_dim: int
    heads: tuple[int, int] | None = None

    @property
    def identity(self) -> bool:
        return self.teacher_dim == self.student_dim

    @property
    def params(self) -> int:
        return 0 if self.identity else self.teacher_dim * self.student_dim

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "teacher_dim": self.teacher_dim, "student_dim": self.student_dim,
                "heads": list(self.heads) if self.heads else None, "params": self.params}


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
    # coherent forms only: the spaces of the output (rows) and input (columns) axes (None: the
    # axis is not projected), which teacher layer of the group the start selects, and the
    # factor folded into a generated embedding.
    out_space: str | None = None
    in_space: str | None = None
    select: int = 0
    scale: float = 1.0

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
    """State-dict tensors of the config's model in order, tied keys folded together."""
    with torch.device("meta"):
        model = build_model(config)
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


_ATTENTION = re.compile(r"(self_attn|encoder_attn)\.(q|k|v|out)_proj\.(weight|bias)")


class _Builder:
    """Turns each student tensor into a generator entry or a constant (see `_RULES`)."""

    def __init__(self, teacher_config: MarianConfig, student_config: MarianConfig, generator: str):
        layout = _layout(teacher_config)
        self.teacher = {t.name: t.shape for t in layout}
        # every teacher state-dict key → the key its tensor is stored under in the layout
        self.canonical = {a: t.name for t in layout for a in (t.name, *t.aliases)}
        self.groups = {
            side: partition_layers(getattr(teacher_config, f"{side}_layers"), getattr(student_config, f"{side}_layers"))
            for side in SIDES
        }
        self.pad = student_config.pad_token_id
        self.coherent = generator == "coherent"
        self.narrow = is_narrow(student_config)
        self.shared_stream = bool(getattr(student_config, "share_encoder_decoder_embeddings", False)) and not self.narrow
        self.scale_embedding = bool(getattr(teacher_config, "scale_embedding", False))
        self.heads = {
            side: (getattr(teacher_config, f"{side}_attention_heads"), getattr(student_config, f"{side}_attention_heads"))
            for side in SIDES
        }
        self.spaces: dict[str, Space] = {}

    def teacher_shape(self, names: tuple[str, ...]) -> tuple[int, ...]:
        missing = [n for n in names if n not in self.teacher]
        if missing:
            raise WdctlError(f"teacher layout has no tensor {missing[0]} (unexpected Marian layout)")
        return self.teacher[names[0]]

    def teacher_name(self, name: str) -> str:
        if name not in self.canonical:
            raise WdctlError(f"teacher layout has no tensor {name} (unexpected Marian layout)")
        return self.canonical[name]

    # --- coherent spaces ---

    def residual(self, side: str) -> str:
        return "residual" if self.shared_stream else f"{side}.residual"

    def space(self, name: str | None, teacher_dim: int, student_dim: int, heads=None) -> str | None:
        if name is None:
            return None
        known = self.spaces.setdefault(name, Space(name, teacher_dim, student_dim, heads))
        if (known.teacher_dim, known.student_dim) != (teacher_dim, student_dim):
            raise WdctlError(f"space {name} is {known.teacher_dim}->{known.student_dim} and "
                             f"{teacher_dim}->{student_dim} (unexpected Marian layout)")
        return name

    def layer_spaces(self, side: str, index: int, suffix: str) -> tuple[str | None, str | None]:
        """(output space, input space) of a layer tensor, by its role."""
        res = self.residual(side)
        m = _ATTENTION.fullmatch(suffix)
        if m:
            block, proj = m.group(1), m.group(2)
            source = self.residual("encoder") if block == "encoder_attn" else res
            qk, vo = f"{side}.{index}.{block}.qk", f"{side}.{index}.{block}.vo"
            return {"q": (qk, res), "k": (qk, source), "v": (vo, source), "out": (res, vo)}[proj]
        if suffix.startswith("fc1."):
            return f"{side}.{index}.ffn", res
        if suffix.startswith("fc2."):
            return res, f"{side}.{index}.ffn"
        if "layer_norm" in suffix:
            return res, None
        raise WdctlError(f"no space rule for {side} layer tensor {suffix} (unexpected Marian layout)")

    def coherent_layer(self, t: _Tensor, side: str, index: int, suffix: str, names, shape) -> GeneratorEntry:
        out_space, in_space = self.layer_spaces(side, index, suffix)
        heads = self.heads[side] if out_space and out_space.endswith((".qk", ".vo")) else None
        out_space = self.space(out_space, shape[0], t.shape[0], heads)
        if len(shape) == 2:
            in_heads = self.heads[side] if in_space and in_space.endswith(".vo") else None
            in_space = self.space(in_space, shape[1], t.shape[1], in_heads)
        else:
            in_space = None
        if len(names) == 1 and shape == t.shape:
            form = "elementwise"
        else:
            form = {2: "shared-matrix", 1: "shared-vector"}[len(shape)]
        return GeneratorEntry(t.name, t.aliases, f"{side}.{suffix}", index, names, shape, t.shape, form,
                              out_space=out_space, in_space=in_space)

    # --- rules ---

    def layer(self, t: _Tensor, m: re.Match) -> GeneratorEntry:
        side, index, suffix = m.group(1), int(m.group(2)), m.group(3)
        names = tuple(f"model.{side}.layers.{l}.{suffix}" for l in self.groups[side][index])
        shape = self.teacher_shape(names)
        if self.coherent:
            return self.coherent_layer(t, side, index, suffix, names, shape)
        if len(names) == 1 and shape == t.shape:
            form = "elementwise"
        else:
            form = {2: "matrix", 1: "vector"}[len(shape)]
        return GeneratorEntry(t.name, t.aliases, f"{side}.{suffix}", index, names, shape, t.shape, form)

    def embedding(self, t: _Tensor, m: re.Match) -> GeneratorEntry:
        role = "shared" if m.group(1) is None else f"{m.group(1)}.embed_tokens"
        source = self.teacher_name(t.name)
        shape = self.teacher_shape((source,))
        if not self.coherent:
            return GeneratorEntry(t.name, t.aliases, role, None, (source,), shape, t.shape, "embedding", self.pad)
        side = m.group(1) or "encoder"
        space = self.space(self.residual(side), shape[1], t.shape[1])
        scale = math.sqrt(shape[1] / t.shape[1]) if self.scale_embedding else 1.0
        return GeneratorEntry(t.name, t.aliases, role, None, (source,), shape, t.shape, "shared-embedding",
                              self.pad, in_space=space, scale=scale)

    def projection(self, t: _Tensor, m: re.Match) -> GeneratorEntry:
        source = self.teacher_name(t.name)
        shape = self.teacher_shape((source,))
        if not self.coherent:
            return GeneratorEntry(t.name, t.aliases, "lm_head", None, (source,), shape, t.shape, "projection")
        space = self.space(self.residual("decoder"), shape[1], t.shape[1])
        return GeneratorEntry(t.name, t.aliases, "lm_head", None, (source,), shape, t.shape, "shared-projection",
                              in_space=space)

    def from_skeleton(self, t: _Tensor, m: re.Match) -> GeneratorEntry | ConstantEntry:
        """Position tables: the skeleton's, except that a narrower stream of a NarrowMarianMTModel
        (which saves its tables) gets the teacher's through the coherent residual projection."""
        side = m.group(1)
        source = self.teacher_name(t.name)
        shape = self.teacher_shape((source,))
        if self.coherent and self.narrow and shape != t.shape:
            space = self.space(self.residual(side), shape[1], t.shape[1])
            return GeneratorEntry(t.name, t.aliases, f"{side}.embed_positions", None, (source,), shape, t.shape,
                                  "positions", in_space=space)
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
