"""Cut-off initialisation: the paper's baseline of slicing the teacher down to the student.

Each student tensor is copied from one teacher instance of its group (the same partition as
weight grouping; by default the *bottom* one, so with an integer ratio r this is every r-th
teacher layer, starting at layer 0), keeping the selected coordinates of every space it reads
or writes (the coherent generator's spaces, so that the coherent step-0 student equals this
one): by default the leading rows/columns, or the indices `start` gives, e.g.
`wdctl.passes.selection.importance_start`. The two fixes of the method spec (section 2b) that help every method apply here too: with
`scale_embedding`, a narrower embedding table is multiplied by √(d_t/d_s) so the residual
stream keeps the teacher's scale, and a NarrowMarianMTModel's narrower decoder takes the
teacher's sinusoidal table at the selected columns (a plain MarianMTModel keeps its own table,
which it does not save). The pad embedding rows are zeroed, as for the generated student.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import MarianConfig, MarianMTModel

from wdctl.core.errors import WdctlError
from wdctl.passes.grouping import GeneratorEntry, GroupPlan
from wdctl.passes.narrow_marian import build_model


def _select(entry: GeneratorEntry, teacher: Tensor, indices: Mapping[str, Tensor]) -> Tensor:
    out = indices.get(entry.out_space) if entry.out_space else None
    into = indices.get(entry.in_space) if entry.in_space else None
    if out is not None:
        teacher = teacher.index_select(0, out.to(teacher.device))
    if into is not None:
        teacher = teacher.index_select(1, into.to(teacher.device))
    if tuple(teacher.shape) != entry.student_shape:
        raise WdctlError(f"cut of {entry.name} has shape {tuple(teacher.shape)}, expected {entry.student_shape}")
    return teacher * entry.scale if entry.scale != 1.0 else teacher


def cut_teacher(
    teacher_state: Mapping[str, Tensor],
    teacher_config: MarianConfig,
    student_config: MarianConfig,
    start: Mapping[str, Tensor] | None = None,
    start_layers: Mapping[tuple[str, int], int] | None = None,
    values: Mapping[str, Tensor] | None = None,
) -> MarianMTModel:
    """A student initialised from teacher slices (eval mode; tied weights stay tied).

    `start` overrides the leading selection per space (teacher coordinates in student order),
    exactly as `ParameterGenerator(..., start=...)` does, and `start_layers` the teacher layer
    each student layer copies (`GroupPlan.with_start_layers`), so cut-kd and coherent WD start
    from the same slice; `values` replaces student tensors of the slice (`refit.refit_output_layer`)."""
    plan = GroupPlan.build(teacher_config, student_config, generator="coherent")
    if start_layers:
        plan = plan.with_start_layers(start_layers)
    return cut_from_plan(teacher_state, plan, start, values)


def cut_from_plan(
    teacher_state: Mapping[str, Tensor], plan: GroupPlan, start: Mapping[str, Tensor] | None = None,
    values: Mapping[str, Tensor] | None = None,
) -> MarianMTModel:
    """`cut_teacher` for a coherent plan already built (its entries' `select` pick the layers)."""
    if plan.generator != "coherent":
        raise WdctlError("cut_from_plan needs a coherent plan (its spaces say what to slice)")
    plan.check_teacher_state(teacher_state)
    values = values or {}
    plan.check_start_values(values)
    student_config = plan.student_config
    indices = {**plan.start_indices(), **(start or {})}
    model = build_model(student_config)
    targets = model.state_dict()
    with torch.no_grad():
        for e in plan.entries:
            value = _select(e, teacher_state[e.teacher_names[e.select]].float(), indices)
            targets[e.name].copy_(values.get(e.name, value))
            if e.pad_row is not None:
                targets[e.name][e.pad_row].zero_()
        for c in plan.constants:
            if c.source == "teacher":
                targets[c.name].copy_(teacher_state[c.name])
    return model.eval()
