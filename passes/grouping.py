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

Two generator families (`GENERATOR_FORMS`, chosen with `generator=`):

- `coherent` (the default; method spec section 2b): projections belong to *spaces*, shared by
  every tensor that reads or writes that space: the residual stream (one for both sides when
  the student shares its embeddings, else one per side), each FFN hidden space
  (`{side}.{layer}.ffn`) and each attention block's query-key and value-output spaces
  (`{side}.{layer}.{block}.qk` / `.vo`). A space whose student width equals the teacher's
  needs no projection (identity, no parameters); a narrower one gets a `teacher × student`
  matrix that starts as a selection of teacher coordinates (`GroupPlan.start_indices`: the
  leading ones = the cut-off student; `wdctl.passes.selection.importance_start` ranks them by
  importance on a few batches instead).
  Layer tensors use `shared-matrix` / `shared-vector` (W_L = I, one-hot w on the teacher layer
  `select` of the group; B such that the step-0 student equals the selected slice) or
  `elementwise` when nothing changes shape; embeddings `shared-embedding` (with √(d_t/d_s)
  folded in when `scale_embedding`), an untied output layer `shared-projection`, and a
  narrower decoder of a `NarrowMarianMTModel` gets the teacher's position table through its
  residual projection (`positions`; plain Marian students keep their own table, because
  MarianMTModel does not save it).
- `release` (the authors' release, section 2): unshared Xavier projections per tensor.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

import torch
from transformers import MarianConfig

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.narrow_marian import build_model, is_narrow
from wdctl.passes.student import StudentSpec, check_student_config, check_teacher, validate

FP32_BYTES = 4
DEFAULT_SUBSET_BYTES = 256 * 2**20
SIDES = ("encoder", "decoder")
GENERATOR_FORMS = ("coherent", "release")
DEFAULT_GENERATOR = "coherent"

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
    generator: str = DEFAULT_GENERATOR
    spaces: tuple[Space, ...] = ()

    @classmethod
    def build(
        cls,
        teacher_config: MarianConfig,
        student_config: MarianConfig,
        subset_bytes: int = DEFAULT_SUBSET_BYTES,
        generator: str = DEFAULT_GENERATOR,
    ) -> GroupPlan:
        """Plan the generators of `generator` form (`coherent`, the default, or `release`)."""
        if generator not in GENERATOR_FORMS:
            raise InputError(f"unknown generator '{generator}'; choose one of {', '.join(GENERATOR_FORMS)}")
        check_teacher(teacher_config)
        check_student_config(student_config)
        validate(StudentSpec.from_config(student_config), teacher_config)
        narrow = is_narrow(student_config)
        for name in KEPT_SETTINGS:
            if narrow and name == "share_encoder_decoder_embeddings":
                continue  # a narrower decoder has its own embedding by construction
            if getattr(teacher_config, name, None) != getattr(student_config, name, None):
                raise InputError(
                    f"student {name}={getattr(student_config, name, None)!r} differs from the teacher's "
                    f"{getattr(teacher_config, name, None)!r}; build the student config with student_config()"
                )
        if subset_bytes <= 0:
            raise InputError(f"subset_bytes must be positive, got {subset_bytes}")
        builder = _Builder(teacher_config, student_config, generator)
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
            generator=generator,
            spaces=tuple(builder.spaces.values()),
        )

    def with_start_layers(self, layers: Mapping[tuple[str, int], int]) -> GroupPlan:
        """The same plan with the start moved, per (side, student layer), to that index within
        its group of teacher layers (0 = the bottom layer, the cut-off student's)."""
        entries = []
        for e in self.entries:
            side = e.role.split(".")[0]
            if e.student_layer is not None and (side, e.student_layer) in layers:
                index = layers[(side, e.student_layer)]
                if not 0 <= index < e.ratio:
                    raise InputError(f"{side} layer {e.student_layer} has {e.ratio} teacher layers, not {index + 1}")
                e = replace(e, select=index)
            entries.append(e)
        return replace(self, entries=tuple(entries))

    def start_layers(self) -> dict[tuple[str, int], int]:
        """Per (side, student layer), the index within its group that the start selects."""
        return {(e.role.split(".")[0], e.student_layer): e.select for e in self.entries if e.student_layer is not None}

    @property
    def projected_spaces(self) -> tuple[Space, ...]:
        """The spaces that carry a projection (student narrower than the teacher)."""
        return tuple(s for s in self.spaces if not s.identity)

    def start_indices(self) -> dict[str, torch.Tensor]:
        """Per projected space, the teacher coordinates the default start selects, in student
        order: the leading `student_dim` ones (the cut-off student; for an attention space whose
        head size is kept, the first student-heads teacher heads)."""
        return {s.name: torch.arange(s.student_dim) for s in self.projected_spaces}

    @property
    def total_generator_params(self) -> int:
        return sum(e.params for e in self.entries) + sum(s.params for s in self.spaces)

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
            "subset_work": 2 * max((sum(self.entries[i].work_bytes for i in s) for s in self.subsets), default=0),
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
        spaces = self.projected_spaces
        lines += [
            "",
            f"generator form: {self.generator}"
            + (f" ({len(spaces)} shared projection(s), {sum(s.params for s in spaces):,} parameters; "
               f"{len(self.spaces) - len(spaces)} space(s) kept at full width)"
               if self.generator == "coherent" else " (unshared projections per tensor)"),
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
            "generator": self.generator,
            "spaces": [s.to_dict() for s in self.spaces],
            "generators": [e.to_dict() for e in self.entries],
            "constants": [c.to_dict() for c in self.constants],
            "subset_bytes": self.subset_bytes,
            "subsets": [[self.entries[i].name for i in s] for s in self.subsets],
            "total_generator_params": self.total_generator_params,
            "total_generator_bytes": self.total_generator_bytes,
            "phase1_memory": self.phase1_memory(),
            "phase1_bytes": self.estimate_phase1_bytes(),
        }


def generator_sizes(
    teacher_config: MarianConfig, student_config: MarianConfig, subset_bytes: int = DEFAULT_SUBSET_BYTES
) -> dict[str, int]:
    """Trainable generator parameters of every generator form, e.g. for `wdctl inspect`:
    `{"coherent": ..., "release": ...}` (plans are built on the meta device: no weight memory)."""
    return {
        form: GroupPlan.build(teacher_config, student_config, subset_bytes, generator=form).total_generator_params
        for form in GENERATOR_FORMS
    }
