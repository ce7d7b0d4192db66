"""Cut-off initialisation: the paper's baseline of slicing the teacher down to the student.

Each student tensor is copied from the *bottom* teacher instance of its group (the same
partition as weight grouping, so with an integer ratio r this is every r-th teacher layer,
starting at layer 0), keeping the leading rows/columns; embedding tables keep their leading
columns. The pad embedding row is zeroed, as for the generated student.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import MarianConfig, MarianMTModel

from wdctl.passes.grouping import GroupPlan


def cut_teacher(
    teacher_state: Mapping[str, Tensor], teacher_config: MarianConfig, student_config: MarianConfig
) -> MarianMTModel:
    """A student initialised from teacher slices (eval mode; tied weights stay tied)."""
    plan = GroupPlan.build(teacher_config, student_config)
    plan.check_teacher_state(teacher_state)
    model = MarianMTModel(student_config)
    targets = model.state_dict()
    with torch.no_grad():
        for e in plan.entries:
            source = teacher_state[e.teacher_names[0]]
            targets[e.name].copy_(source[tuple(slice(0, n) for n in e.student_shape)])
            if e.pad_row is not None:
                targets[e.name][e.pad_row].zero_()
        for c in plan.constants:
            if c.source == "teacher":
                targets[c.name].copy_(teacher_state[c.name])
    return model.eval()
