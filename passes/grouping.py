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

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from transformers import MarianConfig

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.memory import teacher_pass_bytes, training_peak
from wdctl.passes.narrow_marian import count_parameters, is_narrow
# the per-tensor planning lives in `spaces`; its public names are re-exported from here
from wdctl.passes.spaces import (FORM_COSTS, FP32_BYTES, SIDES, ConstantEntry, GeneratorEntry,  # noqa: F401
                                 Space, _Builder, _classify, _layout, matrix_out_first, partition_layers)
from wdctl.passes.student import StudentSpec, check_student_config, check_teacher, validate

DEFAULT_SUBSET_BYTES = 256 * 2**20
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
    decoder_residual: str = "decoder.residual"  # the decoder's residual space (`_Builder.residual`)

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
            decoder_residual=builder.residual("decoder"),
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

    def decoder_residual_start(self, start: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        """The teacher residual coordinates the student's decoder keeps: `start`'s (importance),
        else the leading ones; None at the teacher's width. The space is the decoder's own (a
        decoder narrower than the encoder, TINY) or the stream both sides share (`halved`)."""
        return {**self.start_indices(), **(start or {})}.get(self.decoder_residual)

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

    def check_start_values(self, values: Mapping[str, torch.Tensor]) -> None:
        """Student tensors given to replace the start's (e.g. the output refit's) must each be
        one entry's, with its student shape."""
        shapes = {e.name: e.student_shape for e in self.entries}
        for name, value in values.items():
            if name not in shapes:
                raise WdctlError(f"start value {name} is not a generated student tensor")
            if tuple(value.shape) != shapes[name]:
                raise WdctlError(f"start value {name} has shape {_fmt_shape(tuple(value.shape))}, "
                                 f"the student has {_fmt_shape(shapes[name])}")

    def subset_entries(self, index: int) -> list[GeneratorEntry]:
        return [self.entries[i] for i in self.subsets[index]]

    def phase_memory(self, phase: str, max_tokens: int, precision: str = "fp32",
                     teacher_loss: str | None = None) -> dict[str, int]:
        """Estimated peak resident bytes of WD's `phase` ("phase1" or "phase2") on micro-batches of
        `max_tokens` tokens in `precision`, by component (`wdctl.passes.memory.training_peak`).

        Both phases hold the frozen teacher. Phase 1 trains the generators: at the peak (the start
        of the student's backward) it holds them with Adam's two moments, and three student-sized
        sets: the generated tensors, the skeleton they are swapped into, and their gradients. The
        generators' own gradients come later, after the activations are freed, with one subset
        recomputed under checkpoint; when that is larger than the activations it is the peak
        (`generator_backward` instead of `activations`). Phase 2 trains the student: its weights,
        gradients and Adam's two moments. `teacher_loss` ("states", "kl": `TrainConfig.teacher_loss`)
        adds the teacher's forward on every step (`teacher_pass`)."""
        memory = self._phase_memory(phase, max_tokens, precision)
        if teacher_loss:
            memory["teacher_pass"] = teacher_pass_bytes(self.teacher_config, max_tokens, teacher_loss)
        return memory

    def _phase_memory(self, phase: str, max_tokens: int, precision: str) -> dict[str, int]:
        teacher = FP32_BYTES * count_parameters(self.teacher_config)
        student = FP32_BYTES * count_parameters(self.student_config)
        if phase == "phase2":
            return training_peak(self.student_config, max_tokens, precision, teacher=teacher, student=4 * student)
        if phase != "phase1":
            raise ValueError(f"phase must be phase1 or phase2, got {phase!r}")
        generator = FP32_BYTES * self.total_generator_params
        memory = training_peak(self.student_config, max_tokens, precision, teacher=teacher, generator=3 * generator,
                               student=3 * student)
        work = 2 * max((sum(self.entries[i].work_bytes for i in s) for s in self.subsets), default=0)
        if generator + work > memory["activations"]:
            memory["generator_backward"] = generator + work
            del memory["activations"]
        return memory

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
        """A readable table, one row per class, with totals (the memory estimate, which depends on
        the batch, is `phase_memory`)."""
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
