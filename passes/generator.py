"""Parameter generators: the student's weights as a trainable function of the frozen teacher's.

One small module per `GeneratorEntry` of a `GroupPlan`; the plan's `generator` picks the family
(`GENERATOR_FORMS`: `coherent`, the default, or `release`). The teacher tensors live in those
modules as non-persistent buffers: they move with `.to(device)` but never get gradients and
never appear in `state_dict()`, which therefore holds exactly the generator parameters.

Coherent forms (method spec, section 2b): the projections belong to the plan's *spaces* and
live once in `ParameterGenerator.projections` (one `teacher × student` matrix per narrower
space, started as the selection `plan.start_indices()`: a one-hot column per kept
coordinate), shared by every tensor that reads or writes the space. Layer mixing starts at
W_L = I with w one-hot on the teacher layer `entry.select` of the group (every layer of the
group stays learnable: each gets a gradient through w), and B starts at S'₀ − tanh(S'₀), so
the step-0 student *equals* the selected slice (the cut-off student for a leading selection):
- elementwise: S = W ⊙ tanh(T) + B, B₀ = T − tanh(T);
- shared-matrix / shared-vector: S = W ⊙ tanh(Σ_l alpha_l P_out^T T_l P_in) + B;
- shared-embedding: S = W ⊙ tanh(c·E_t·P) + B, c = √(d_t/d_s) with scale_embedding, pad row 0;
- shared-projection (untied output layer): S = W ⊙ tanh(O_t·P) + B;
- positions: S = pos_t·P (a NarrowMarianMTModel's narrower decoder gets the teacher's table).

Release forms (see the method spec, section 2; generators are never shared between classes or
student layers):
- elementwise (same shape, one teacher instance): S = W ⊙ tanh(T) + B, so the initial student
  is tanh(teacher);
- matrix: alpha = W_L·w, S = W ⊙ tanh(Σ_l alpha_l W_O^T T_l W_I) + B;
- vector: s = W ⊙ tanh(Σ_l alpha_l W_O^T b_l) + B;
- embedding: S = W ⊙ tanh(E_t·P) + B with per-token W, B, and P only when widths differ; the
  pad row is forced to zero because CTranslate2 drops it and decodes from a zero embedding;
- projection (untied output layer only): S = O_t·P_out, no tanh. P_out is Xavier-normal when
  widths differ and starts as the identity when they match (wdctl's choice: the spec leaves
  this case open, and the identity keeps the teacher's output layer as the starting point).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from transformers import MarianConfig, MarianMTModel

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.grouping import GENERATOR_FORMS, GeneratorEntry, GroupPlan, matrix_out_first
from wdctl.passes.narrow_marian import build_model
from wdctl.passes.student import StudentSpec

Spaces = Mapping[str, Tensor]


def _xavier(rows: int, cols: int, rng: torch.Generator) -> nn.Parameter:
    return nn.Parameter(nn.init.xavier_normal_(torch.empty(rows, cols), generator=rng))


def _buffer_name(key: str) -> str:
    """State-dict keys contain dots, which module and buffer names may not."""
    return key.replace(".", "__")


class _Generator(nn.Module):
    """Holds one entry's teacher instances as frozen, non-persistent buffers."""

    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], rng: torch.Generator):
        super().__init__()
        self.entry = entry
        for i, t in enumerate(teachers):
            self.register_buffer(f"teacher_{i}", t.detach().to(torch.float32), persistent=False)

    def teachers(self) -> list[Tensor]:
        return [getattr(self, f"teacher_{i}") for i in range(self.entry.ratio)]

    def _affine_tanh(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.B, self.W, torch.tanh(x))

    def _init_affine(self) -> None:
        self.W = nn.Parameter(torch.ones(self.entry.student_shape))
        self.B = nn.Parameter(torch.zeros(self.entry.student_shape))


class ElementwiseGenerator(_Generator):
    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], rng: torch.Generator):
        super().__init__(entry, teachers, rng)
        self._init_affine()

    def forward(self) -> Tensor:
        return self._affine_tanh(self.teacher_0)


def mix_layers(W_L: Tensor, w: Tensor, teachers: list[Tensor]) -> Tensor:
    """Σ_l alpha_l T_l with alpha = W_L·w, done first: it removes the layer axis in one pass."""
    alpha = W_L @ w
    out = alpha[0] * teachers[0]
    for a, t in zip(alpha[1:], teachers[1:]):
        out = out + a * t
    return out


class _MixingGenerator(_Generator):
    """Shared part of the matrix and vector forms: the learned mix of the group's layers."""

    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], rng: torch.Generator):
        super().__init__(entry, teachers, rng)
        r = entry.ratio
        self.W_L = _xavier(r, r, rng)
        self.w = nn.Parameter(torch.full((r,), 1.0 / r))
        self.W_O = _xavier(entry.teacher_shape[0], entry.student_shape[0], rng)
        self._init_affine()


class MatrixGenerator(_MixingGenerator):
    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], rng: torch.Generator):
        super().__init__(entry, teachers, rng)
        self.W_I = _xavier(entry.teacher_shape[1], entry.student_shape[1], rng)
        self.out_first = matrix_out_first(entry.teacher_shape, entry.student_shape)

    def forward(self) -> Tensor:
        m = mix_layers(self.W_L, self.w, self.teachers())
        s = (self.W_O.T @ m) @ self.W_I if self.out_first else self.W_O.T @ (m @ self.W_I)
        return self._affine_tanh(s)


class VectorGenerator(_MixingGenerator):
    def forward(self) -> Tensor:
        return self._affine_tanh(self.W_O.T @ mix_layers(self.W_L, self.w, self.teachers()))


class EmbeddingGenerator(_Generator):
    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], rng: torch.Generator):
        super().__init__(entry, teachers, rng)
        d_t, d_s = entry.teacher_shape[1], entry.student_shape[1]
        self.P = _xavier(d_t, d_s, rng) if d_t != d_s else None
        self._init_affine()

    def forward(self) -> Tensor:
        table = self.teacher_0 if self.P is None else self.teacher_0 @ self.P
        out = self._affine_tanh(table)
        if self.entry.pad_row is None:
            return out
        return out.index_fill(0, torch.tensor([self.entry.pad_row], device=out.device), 0.0)


class ProjectionGenerator(_Generator):
    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], rng: torch.Generator):
        super().__init__(entry, teachers, rng)
        d_t, d_s = entry.teacher_shape[1], entry.student_shape[1]
        self.P_out = _xavier(d_t, d_s, rng) if d_t != d_s else nn.Parameter(torch.eye(d_t))

    def forward(self) -> Tensor:
        return self.teacher_0 @ self.P_out


GENERATORS: dict[str, type[_Generator]] = {
    "elementwise": ElementwiseGenerator,
    "matrix": MatrixGenerator,
    "vector": VectorGenerator,
    "embedding": EmbeddingGenerator,
    "projection": ProjectionGenerator,
}


# --- coherent forms ------------------------------------------------------------------------------

def _project(m: Tensor, p_out: Tensor | None, p_in: Tensor | None, out_first: bool) -> Tensor:
    """P_out^T · M · P_in, either projection possibly absent (identity)."""
    if p_out is not None and (out_first or p_in is None):
        m = p_out.T @ m
        p_out = None
    if p_in is not None:
        m = m @ p_in
    if p_out is not None:
        m = p_out.T @ m
    return m


class _CoherentGenerator(_Generator):
    """S = W ⊙ tanh(S') + B with B₀ = S'₀ − tanh(S'₀): the step-0 student is S'₀ itself, or
    `value` when one is given (B₀ = value − tanh(S'₀), e.g. the output refit's fc2).

    `pre(spaces)` computes S' from the teacher and the shared projections of `spaces`."""

    affine = True

    def __init__(self, entry: GeneratorEntry, teachers: list[Tensor], spaces: Spaces, value: Tensor | None = None):
        super().__init__(entry, teachers, None)
        self._setup(entry)
        if self.affine:
            with torch.no_grad():
                start = self.pre(spaces)
            self.W = nn.Parameter(torch.ones(entry.student_shape))
            self.B = nn.Parameter((start if value is None else value.float()) - torch.tanh(start))
        elif value is not None:
            raise WdctlError(f"{entry.name} has no parameters of its own: its start cannot be replaced")

    def _setup(self, entry: GeneratorEntry) -> None:
        """Parameters that `pre` needs (made before B is derived from it)."""

    def pre(self, spaces: Spaces) -> Tensor:
        raise NotImplementedError

    def forward(self, spaces: Spaces) -> Tensor:
        return self._affine_tanh(self.pre(spaces))


class CoherentElementwiseGenerator(_CoherentGenerator):
    def pre(self, spaces: Spaces) -> Tensor:
        return self.teacher_0


class SharedGenerator(_CoherentGenerator):
    """shared-matrix and shared-vector: mix the group's layers, then project through the spaces."""

    def _setup(self, entry: GeneratorEntry) -> None:
        r = entry.ratio
        self.W_L = nn.Parameter(torch.eye(r))
        self.w = nn.Parameter(torch.nn.functional.one_hot(torch.tensor(entry.select), r).float())
        self.out_first = len(entry.student_shape) == 1 or matrix_out_first(entry.teacher_shape, entry.student_shape)

    def pre(self, spaces: Spaces) -> Tensor:
        m = mix_layers(self.W_L, self.w, self.teachers())
        p_out = spaces.get(self.entry.out_space) if self.entry.out_space else None
        if m.dim() == 1:
            return m if p_out is None else p_out.T @ m
        p_in = spaces.get(self.entry.in_space) if self.entry.in_space else None
        return _project(m, p_out, p_in, self.out_first)


class SharedTableGenerator(_CoherentGenerator):
    """shared-embedding / shared-projection: a vocabulary table, columns through the residual
    projection (per-token W and B); an embedding keeps its pad row at zero."""

    def pre(self, spaces: Spaces) -> Tensor:
        p = spaces.get(self.entry.in_space) if self.entry.in_space else None
        table = self.teacher_0 if p is None else self.teacher_0 @ p
        return table * self.entry.scale if self.entry.scale != 1.0 else table

    def forward(self, spaces: Spaces) -> Tensor:
        out = super().forward(spaces)
        if self.entry.pad_row is None:
            return out
        return out.index_fill(0, torch.tensor([self.entry.pad_row], device=out.device), 0.0)


class PositionsGenerator(_CoherentGenerator):
    """The teacher's position table through the residual projection (no parameters of its own)."""

    affine = False

    def pre(self, spaces: Spaces) -> Tensor:
        p = spaces.get(self.entry.in_space) if self.entry.in_space else None
        return self.teacher_0 if p is None else self.teacher_0 @ p

    def forward(self, spaces: Spaces) -> Tensor:
        return self.pre(spaces)


COHERENT_GENERATORS: dict[str, type[_CoherentGenerator]] = {
    "elementwise": CoherentElementwiseGenerator,
    "shared-matrix": SharedGenerator,
    "shared-vector": SharedGenerator,
    "shared-embedding": SharedTableGenerator,
    "shared-projection": SharedTableGenerator,
    "positions": PositionsGenerator,
}

# generator family → form → generator class
GENERATOR_FAMILIES: dict[str, dict[str, type[_Generator]]] = {
    "release": GENERATORS,
    "coherent": COHERENT_GENERATORS,
}
assert set(GENERATOR_FAMILIES) == set(GENERATOR_FORMS)


def selection_matrix(index: Tensor, teacher_dim: int) -> Tensor:
    """A `teacher_dim × len(index)` matrix with a one in (index[j], j): x·P keeps x[index]."""
    index = torch.as_tensor(index).cpu()
    p = torch.zeros(teacher_dim, len(index))
    p[index, torch.arange(len(index))] = 1.0
    return p


class ParameterGenerator(nn.Module):
    """All generators of a plan; `forward()` returns the complete student state dict.

    Generators are applied subset by subset. While training (grad enabled), each subset runs
    under non-reentrant activation checkpointing: only the generated student tensors are kept,
    and the subset's intermediate products are recomputed in backward, so peak memory holds one
    subset's intermediates rather than all of them.
    """

    def __init__(self, teacher_state: Mapping[str, Tensor], plan: GroupPlan, seed: int = 0,
                 start: Mapping[str, Tensor] | None = None, start_values: Mapping[str, Tensor] | None = None):
        """`seed` fixes the release form's random projections (the coherent start is
        deterministic); `start` (coherent only) overrides `plan.start_indices()`: per projected
        space, the teacher coordinates the student starts from (the indices `cut_teacher` takes,
        e.g. from `wdctl.passes.selection.importance_start`). The teacher layer each student
        layer starts from is the plan's (`GroupPlan.with_start_layers`). `start_values`
        (coherent only) replaces student tensors of that start, as `cut_teacher(values=...)`."""
        super().__init__()
        plan.check_teacher_state(teacher_state)
        self.plan = plan
        rng = torch.Generator().manual_seed(seed)
        self.projections = nn.ParameterDict()
        start_values = start_values or {}
        plan.check_start_values(start_values)
        if start_values and plan.generator != "coherent":
            raise InputError("start values need the coherent generator")
        if plan.generator == "coherent":
            indices = {**plan.start_indices(), **(start or {})}
            for space in plan.projected_spaces:
                index = torch.as_tensor(indices[space.name]).cpu()
                if index.shape != (space.student_dim,) or len(set(index.tolist())) != space.student_dim or (
                        index.min() < 0 or index.max() >= space.teacher_dim):
                    raise InputError(f"start of space {space.name} must be {space.student_dim} distinct teacher "
                                     f"coordinates in [0, {space.teacher_dim})")
                self.projections[_buffer_name(space.name)] = nn.Parameter(selection_matrix(index, space.teacher_dim))
            spaces = self.spaces()
            self.generators = nn.ModuleDict({
                _buffer_name(e.name): COHERENT_GENERATORS[e.form](e, [teacher_state[n] for n in e.teacher_names], spaces,
                                                                  start_values.get(e.name))
                for e in plan.entries
            })
        else:
            self.generators = nn.ModuleDict({
                _buffer_name(e.name): GENERATORS[e.form](e, [teacher_state[n] for n in e.teacher_names], rng)
                for e in plan.entries
            })
        # A throwaway student gives the key order and the sinusoidal tables exactly as HF computes them.
        skeleton = build_model(plan.student_config).state_dict()
        self._keys = list(skeleton)
        for c in plan.constants:
            value = teacher_state[c.name] if c.source == "teacher" else skeleton[c.name]
            self.register_buffer(_buffer_name(c.name), value.detach().to(torch.float32).clone(), persistent=False)

    def constants(self) -> dict[str, Tensor]:
        return {c.name: getattr(self, _buffer_name(c.name)) for c in self.plan.constants}

    def spaces(self) -> dict[str, Tensor]:
        """The shared projections by space name (coherent; empty for the release form)."""
        return {s.name: self.projections[_buffer_name(s.name)] for s in self.plan.projected_spaces
                if _buffer_name(s.name) in self.projections}

    def _subset_tensors(self, index: int) -> tuple[Tensor, ...]:
        entries = self.plan.subset_entries(index)
        if self.plan.generator == "coherent":
            spaces = self.spaces()
            return tuple(self.generators[_buffer_name(e.name)](spaces) for e in entries)
        return tuple(self.generators[_buffer_name(e.name)]() for e in entries)

    def generate_subset(self, index: int) -> dict[str, Tensor]:
        """Student tensors of one subset, tied keys included (all naming the same tensor)."""
        if self.training and torch.is_grad_enabled():
            tensors = checkpoint(self._subset_tensors, index, use_reentrant=False)
        else:
            tensors = self._subset_tensors(index)
        return {
            key: t
            for e, t in zip(self.plan.subset_entries(index), tensors)
            for key in (e.name, *e.aliases)
        }

    def forward(self) -> dict[str, Tensor]:
        state = self.constants()
        for i in range(len(self.plan.subsets)):
            state.update(self.generate_subset(i))
        return {k: state[k] for k in self._keys}


class GeneratedStudent(nn.Module):
    """A Marian student whose weights are regenerated from the teacher on every forward.

    Drop-in for a training loop: `model(input_ids=..., attention_mask=..., labels=...)` returns
    the usual Seq2SeqLMOutput. The skeleton's own parameters are frozen and never used (every
    tensor is supplied by the generator), so the only trainable parameters are the generator's;
    save `model.generator.state_dict()`, not this module's.
    """

    def __init__(self, generator: ParameterGenerator):
        super().__init__()
        self.generator = generator
        self.skeleton = build_model(generator.plan.student_config).requires_grad_(False)
        self._slots = _distinct_slots(self.skeleton)

    @property
    def config(self) -> MarianConfig:
        return self.skeleton.config

    def forward(self, *args, **kwargs):
        state = self.generator()
        tensors = {key: state[key] for key in self._slots}
        return functional_call(self.skeleton, tensors, args=args, kwargs=kwargs, tie_weights=False)


def _distinct_slots(model: nn.Module) -> list[str]:
    """One state-dict key per (module, attribute) slot.

    Marian shares the embedding *module* (model.shared is model.encoder.embed_tokens), so its
    weight has several keys but one slot. functional_call swaps tensors per key and restores
    them in the same order, so swapping one slot twice leaves the generated tensor behind in the
    skeleton after the call; giving each slot once (tie_weights=False) avoids that, and tied
    keys still see the one generated table.
    """
    seen: set[tuple[int, str]] = set()
    keys = []
    for key in model.state_dict():
        owner, _, attr = key.rpartition(".")
        slot = (id(model.get_submodule(owner)), attr)
        if slot not in seen:
            seen.add(slot)
            keys.append(key)
    return keys


def materialize_student(generator: ParameterGenerator, student_config: MarianConfig) -> MarianMTModel:
    """Apply every generator once (no grad, subset by subset) into a plain MarianMTModel (a
    NarrowMarianMTModel for a narrow student config).

    Tied keys share one tensor in the model, so copying the generated table into any of them
    keeps them tied. The returned model is in eval mode.
    """
    plan = generator.plan
    if StudentSpec.from_config(student_config) != StudentSpec.from_config(plan.student_config):
        raise InputError("student config does not match the shape the generator was planned for")
    model = build_model(student_config)
    targets = model.state_dict()
    written: set[str] = set()
    with torch.no_grad():
        for i in range(len(plan.subsets)):
            for key, value in generator.generate_subset(i).items():
                targets[key].copy_(value)
                written.add(key)
        for key, value in generator.constants().items():
            targets[key].copy_(value)
            written.add(key)
    if written != set(targets):
        raise WdctlError(f"generator did not produce student tensors {sorted(set(targets) - written)}")
    return model.eval()
