"""The compression methods, one registry: wd, and the baselines kd, cut-kd and cut-kd-two-phase.

- wd:     phase1 (GeneratedStudent: teacher frozen, only the generators train)
          → materialize → phase2 (all student parameters).
- kd:     random-init student, one phase `train` of phase1+phase2 steps.
- cut-kd: student cut from the teacher (cutoff.cut_teacher), one phase `train` of
          phase1+phase2 steps.
- cut-kd-two-phase: the same cut student on wd's two schedules (phase1, then phase2 with its
          warm-up restarted), so that a comparison separates what the generator adds from what
          the schedule adds.

The baselines use the phase-1 schedule (lr, warm-up, batch) for their whole budget: it is the
schedule for training a model from the start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from wdctl.passes.cutoff import cut_teacher
from wdctl.passes.generator import GeneratedStudent, ParameterGenerator, materialize_student
from wdctl.passes.narrow_marian import build_model
from wdctl.passes.phases import Job, run_phase
from wdctl.passes.refit import refit_output_layer
from wdctl.passes.selection import block_importance, choose_start_layers, importance_start, most_important_layers
from wdctl.passes.training import TrainConfig, collate

IMPORTANCE_BATCHES = 4  # batches of training examples the importance ranking looks at
IMPORTANCE_BATCH_SIZE = 16
REFIT_BATCHES = 48  # batches (of IMPORTANCE_BATCH_SIZE) the output refit fits on: ~24k target tokens
START_FILE = "start.safetensors"  # in the run directory: the computed start, reused on resumption


def baseline_config(phase1: TrainConfig, phase2: TrainConfig) -> TrainConfig:
    """The kd / cut-kd schedule: phase 1's schedule with the budget of both phases. It keeps
    phase 1's stopping rule (none by default): a random-init student's dev BLEU stays flat for
    its first ~2,000 steps here, which phase 2's plateau rule would read as its plateau. Its
    final student is averaged over phase 2's `average_last` checkpoints, as every method's is."""
    minutes = phase1.max_minutes + phase2.max_minutes if phase1.max_minutes and phase2.max_minutes else 0.0
    return replace(phase1, max_steps=phase1.max_steps + phase2.max_steps, max_minutes=minutes,
                   average_last=phase2.average_last)


def run_wd(job: Job) -> nn.Module:
    """Phase 1 trains the parameter generators (teacher frozen), phase 2 the materialized student."""
    def build_generated():
        return GeneratedStudent(ParameterGenerator(job.teacher.state_dict(), job.plan, seed=job.phase1.seed,
                                                  start=job.start, start_values=job.start_values))

    def materialize(model):
        return materialize_student(model.generator, job.student_config)

    generated = run_phase(job, "phase1", build_generated, job.phase1, finish=materialize, to_marian=materialize)
    return run_phase(job, "phase2", lambda: generated, job.phase2, last=True)


def run_kd(job: Job) -> nn.Module:
    """Sequence-level KD: a randomly initialised student trained for phase1+phase2 steps."""
    def build():
        torch.manual_seed(job.phase1.seed)
        return build_model(job.student_config)

    return run_phase(job, "train", build, baseline_config(job.phase1, job.phase2), last=True)


def _cut_student(job: Job) -> nn.Module:
    return cut_teacher(job.teacher.state_dict(), job.teacher_config, job.student_config,
                       start=job.start, start_layers=job.start_layers, values=job.start_values)


def run_cut_kd(job: Job) -> nn.Module:
    """Cut-off init + KD: the student sliced from the teacher, trained for phase1+phase2 steps."""
    return run_phase(job, "train", lambda: _cut_student(job), baseline_config(job.phase1, job.phase2), last=True)


def run_cut_kd_two_phase(job: Job) -> nn.Module:
    """cut-kd on wd's schedule: phase 1's steps and schedule, then phase 2's (warm-up restarted)."""
    first = run_phase(job, "phase1", lambda: _cut_student(job), job.phase1)
    return run_phase(job, "phase2", lambda: first, job.phase2, last=True)


def _training_batches(job: Job, count: int) -> list[dict]:
    """The first `count` batches of IMPORTANCE_BATCH_SIZE training examples (the start's data)."""
    n = IMPORTANCE_BATCH_SIZE
    examples = job.examples[: count * n]
    return [collate(examples[i : i + n], job.pad_id, job.start_id) for i in range(0, len(examples), n)]


def refit_start(job: Job) -> None:
    """`--refit-output`: the student's top decoder layer refitted to the teacher's last decoder
    state (`refit.refit_output_layer`) on REFIT_BATCHES training batches, from the job's start
    slice; stored as `job.start_values`, so wd and cut-kd start from the same refitted slice."""
    job.start_values = refit_output_layer(job.teacher, _cut_student(job), _training_batches(job, REFIT_BATCHES),
                                          job.plan.decoder_residual_start(job.start))


def choose_start(job: Job, layers: str = "loss") -> None:
    """`--start importance` / `block-importance`: rank the teacher coordinates on a few training
    batches (`importance_start`), pick each student layer's teacher layer by the cut student's
    loss (`choose_start_layers`, layers="loss") or by block importance (layers="block"), and
    store both on the job (its plan moved to those layers), so wd and cut-kd start from the same
    slice."""
    batches = _training_batches(job, IMPORTANCE_BATCHES)
    job.start = importance_start(job.plan, job.teacher, batches)
    if layers == "block":
        job.start_layers = most_important_layers(job.plan, block_importance(job.teacher, batches))
    else:
        job.start_layers = choose_start_layers(job.plan, job.teacher.state_dict(), batches[:1], start=job.start)
    job.plan = job.plan.with_start_layers(job.start_layers)


def save_start(job: Job, path: Path) -> None:
    """The start `choose_start` and `refit_start` computed (coordinates, layers, refitted values),
    written atomically, so that a resumed run reuses it instead of ranking and refitting again."""
    tensors = {f"start.{k}": v.clone() for k, v in (job.start or {}).items()}
    tensors |= {f"values.{k}": v.clone() for k, v in (job.start_values or {}).items()}
    layers = None if job.start_layers is None else [[*key, index] for key, index in sorted(job.start_layers.items())]
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"start": str(job.start is not None), "start_layers": json.dumps(layers)})
    tmp.replace(path)


def load_start(job: Job, path: Path) -> None:
    """A start `save_start` wrote, onto the job as `choose_start` and `refit_start` leave it."""
    with safe_open(str(path), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()

    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    job.start = part("start.") if meta["start"] == "True" else None
    job.start_values = part("values.") or None
    layers = json.loads(meta["start_layers"])
    if layers is not None:
        job.start_layers = {(side, layer): index for side, layer, index in layers}
        job.plan = job.plan.with_start_layers(job.start_layers)


def _two_phases_last(phase1: TrainConfig, phase2: TrainConfig) -> tuple[str, TrainConfig]:
    return "phase2", phase2


def _one_phase_last(phase1: TrainConfig, phase2: TrainConfig) -> tuple[str, TrainConfig]:
    return "train", baseline_config(phase1, phase2)


@dataclass(frozen=True)
class Method:
    run: Callable[[Job], nn.Module]
    needs_generator: bool  # wd: a GroupPlan (written to the run dir) and the phase-1 memory guard
    # the phase that trains on when rerun with a larger budget, and its schedule
    last_phase: Callable[[TrainConfig, TrainConfig], tuple[str, TrainConfig]]


METHODS: dict[str, Method] = {
    "wd": Method(run_wd, needs_generator=True, last_phase=_two_phases_last),
    "kd": Method(run_kd, needs_generator=False, last_phase=_one_phase_last),
    "cut-kd": Method(run_cut_kd, needs_generator=False, last_phase=_one_phase_last),
    "cut-kd-two-phase": Method(run_cut_kd_two_phase, needs_generator=False, last_phase=_two_phases_last),
}
STARTS_FROM_TEACHER = ("wd", "cut-kd", "cut-kd-two-phase")  # the methods whose student starts from a teacher slice
