"""Training phases with resume: one phase trains one model through the shared loop
(`wdctl.passes.training.train`) into its own run subdirectory.

A phase that finished leaves `done.json` and its student in `PHASE/student`, so rerunning the
same command after Ctrl-C resumes the interrupted phase (from its checkpoints) and skips the
finished ones. The run directory is resumed only by a run of the same settings
(`claim_run_dir`, over `fingerprint`); with --force a run of other settings is started over.
With the inverse-sqrt schedule the step budget of the last phase is not one of those settings
(the schedule does not depend on it): a finished run rerun with a larger --phase2-steps trains
its last phase on from its last checkpoint, to where one longer run would have been.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from wdctl.core.atomic import atomic_dir
from wdctl.core.corpus import Pair
from wdctl.core.errors import InputError
from wdctl.core.runinfo import PeakRSS, available_bytes, release_free_memory, rss_bytes, write_json
from wdctl.passes.distributed import Distributed
from wdctl.passes.marian import freeze_pad_row
from wdctl.passes.student import StudentSpec
from wdctl.passes.training import (TrainConfig, checkpoint_dirs, checkpoint_step, collate, logged_scores, plateaued,
                                   sequence_loss, train)
from wdctl.passes.translate import dev_bleu_evaluator

# Options that may change between a run and its resumption (they do not change what is trained).
# The plateau options only decide where a run ends, like max_minutes.
_VOLATILE = ("threads", "eval_every", "save_every", "log_every", "max_minutes", "device",
             "plateau_patience", "plateau_min_gain")


@dataclass
class Job:
    """Everything the methods need; filled in by the compress recipe."""

    teacher_dir: Path
    teacher_config: object
    spec: StudentSpec
    student_config: object
    method: str
    phase1: TrainConfig
    phase2: TrainConfig
    run_dir: Path
    plan: object = None
    start: dict | None = None  # per projected space, the teacher coordinates to start from (importance)
    start_layers: dict | None = None  # per (side, student layer), the teacher layer to start from
    start_values: dict | None = None  # student tensors replacing the cut's (the output refit)
    teacher: nn.Module | None = None
    tokenizer: object = None
    examples: list = field(default_factory=list)
    probe: list = field(default_factory=list)
    dev_pairs: list[Pair] | None = None
    eval_sentences: int = 0
    phases: dict = field(default_factory=dict)
    dist: Distributed = Distributed()

    @property
    def pad_id(self) -> int:
        return self.student_config.pad_token_id

    @property
    def start_id(self) -> int:
        return self.student_config.decoder_start_token_id


@torch.no_grad()
def probe_loss(model: nn.Module, examples: list, pad_id: int, start_id: int, label_smoothing: float) -> float:
    """Label-smoothed CE per target token of `model` (eval mode) on a fixed list of examples."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for i in range(0, len(examples), 16):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + 16], pad_id, start_id).items()}
        labels = batch.pop("labels")
        total += float(sequence_loss(model(**batch).logits, labels, label_smoothing))
        tokens += int((labels != -100).sum())
    model.train(was_training)
    return total / max(tokens, 1)


def _step0_probe(job: Job, phase_dir: Path, model: nn.Module, cfg: TrainConfig) -> float | None:
    """The probe loss of the phase's start, measured once and kept in the phase directory, so a
    resumed run still reports it (None for a run checkpointed before it was kept)."""
    path = phase_dir / "probe_before.json"
    if checkpoint_dirs(phase_dir):
        return json.loads(path.read_text())["probe_loss"] if path.is_file() else None
    before = probe_loss(model, job.probe, job.pad_id, job.start_id, cfg.label_smoothing)
    if job.dist.is_main:
        phase_dir.mkdir(parents=True, exist_ok=True)
        write_json(path, {"probe_loss": before})
    return before


def _dev_evaluator(job: Job, to_marian: Callable[[nn.Module], nn.Module]):
    if not job.dev_pairs or job.eval_sentences <= 0:
        return None
    evaluate = dev_bleu_evaluator(job.tokenizer, job.dev_pairs[: job.eval_sentences], beams=1)
    return lambda model: evaluate(to_marian(model))


def _load_student(path: Path):
    from transformers import AutoModelForSeq2SeqLM

    import wdctl.passes.narrow_marian  # noqa: F401 - registers the narrow model with the Auto classes

    return AutoModelForSeq2SeqLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False).eval()


def _trains_on(phase_dir: Path, finished: dict, cfg: TrainConfig) -> bool:
    """Whether a finished phase has more to train under `cfg`: none of its stopping rules (step
    budget, time budget, dev plateau) holds at the step where it stopped, and its last checkpoint
    is there to go on from."""
    steps = finished["steps"]
    out_of_time = cfg.max_minutes > 0 and finished["train_seconds"] >= cfg.max_minutes * 60
    scores = logged_scores(phase_dir / "log.jsonl", steps)
    return (steps < cfg.max_steps and not out_of_time and bool(checkpoint_dirs(phase_dir))
            and not plateaued(scores, cfg.plateau_patience, cfg.plateau_min_gain))


def run_phase(job: Job, name: str, build: Callable[[], nn.Module], cfg: TrainConfig,
              finish: Callable[[nn.Module], nn.Module] = lambda m: m,
              to_marian: Callable[[nn.Module], nn.Module] = lambda m: m, last: bool = False) -> nn.Module:
    """Train one phase (or skip it if `done.json` says it finished) and return its student.

    `build` makes the model to train (called only when the phase has to run), `finish` turns
    the trained model into a MarianMTModel (materialization for phase 1), `to_marian` does the
    same cheaply for dev evaluation during training. The method's `last` phase, once finished,
    trains on when its budget has grown (an earlier phase is never reopened: the next one
    started from its student).
    """
    from transformers import MarianMTModel

    phase_dir = job.run_dir / name
    done = phase_dir / "done.json"
    if done.is_file():
        finished = json.loads(done.read_text(encoding="utf-8"))
        if not (last and _trains_on(phase_dir, finished, cfg)):
            job.phases[name] = {**finished, "skipped": True}
            if job.dist.is_main:
                print(f"{job.method}:{name}: finished earlier, reusing {phase_dir / 'student'}")
            return _load_student(phase_dir / "student")
        if job.dist.is_main:
            print(f"{job.method}:{name}: finished at step {finished['steps']}; training on to {cfg.max_steps}")

    started = time.perf_counter()
    release_free_memory()  # what earlier phases freed, so that this phase's peak is its own
    rss_start = rss_bytes()
    with PeakRSS() as memory:
        model = build()
        if isinstance(model, MarianMTModel):
            freeze_pad_row(model)  # keep the <pad>/start row at zero while training
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        before = _step0_probe(job, phase_dir, model, cfg)
        result = train(model, job.examples, cfg, phase_dir, pad_id=job.pad_id, start_id=job.start_id,
                       evaluate=_dev_evaluator(job, to_marian),
                       teacher=job.teacher if cfg.needs_teacher else None,
                       hidden_keep=job.plan.decoder_residual_start(job.start) if cfg.hidden_weight > 0 else None,
                       desc=f"{job.method}:{name}")
        after = probe_loss(model, job.probe, job.pad_id, job.start_id, cfg.label_smoothing)
        student = finish(model).to("cpu")  # train() may have moved it to --device
        if student is not model:
            freeze_pad_row(student)
        del model
        if job.teacher is not None:
            job.teacher.to("cpu")
    info = {
        "steps": result.steps,
        "plateau": result.plateau,
        "train_seconds": round(result.train_seconds, 2),  # summed over resumptions
        "wall_seconds": round(time.perf_counter() - started, 2),  # this invocation, build + train + finish
        "peak_rss_mb": round(memory.peak_mb, 1),
        "start_rss_mb": round(rss_start / 2**20, 1),  # before build(): the runtime, teacher and data
        "probe_loss_before": None if before is None else round(before, 4),
        "probe_loss_after": round(after, 4),
        "trainable_parameters": trainable,
        "history": result.history[-50:],
    }
    if job.dist.is_main:
        with atomic_dir(phase_dir / "student", force=True) as tmp:
            student.save_pretrained(tmp, safe_serialization=True)
        write_json(done, info)
    job.dist.barrier()
    job.phases[name] = info
    return student.eval()


# --- the resource guard -------------------------------------------------------------------------

def check_memory(estimates: dict[str, int], available: int | None = None) -> dict:
    """The resource guard: refuse a run when a phase's estimated peak (`estimates`: bytes by phase
    name, from `GroupPlan.phase_memory`) exceeds the RAM available now."""
    available = available_bytes() if available is None else available
    name, estimate = max(estimates.items(), key=lambda item: item[1])
    if estimate > available:
        gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
        raise InputError(
            f"{name.replace('phase', 'phase ')} needs about {gib(estimate)} (weights, optimizer state and the "
            f"activations of a --max-tokens batch) but only {gib(available)} is available; choose a smaller "
            f"--max-tokens, a smaller model, or a machine with more memory"
        )
    return {"estimate_bytes": estimates, "available_bytes": available}


# --- resume ------------------------------------------------------------------------------------

def schedule_fingerprint(cfg: TrainConfig) -> dict:
    """What of a phase's schedule decides what is trained (not threads, logging, time budget)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _VOLATILE}


def jsonable(value):
    """`value` as it reads back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def resumable(fingerprint: dict) -> dict:
    """The part of a run's fingerprint a resumption must match: all of it, except phase 2's step
    budget when both phases decay with inverse-sqrt (their schedules do not depend on it; the
    baselines' one phase follows phase 1's schedule for both budgets). A training option the
    run's config.json lacks (one wdctl gained after the run started) reads as its default."""
    defaults = jsonable(schedule_fingerprint(TrainConfig()))
    phases = [{**defaults, **(fingerprint.get(name) or {})} for name in ("phase1", "phase2")]
    fingerprint = {**fingerprint, "phase1": phases[0], "phase2": phases[1]}
    if any(phase["schedule"] != "inverse-sqrt" for phase in phases):
        return fingerprint
    return {**fingerprint, "phase2": {k: v for k, v in phases[1].items() if k != "max_steps"}}


def trained_steps(phase_dir: Path) -> int:
    """The steps a phase has trained: its done.json's count, else its last checkpoint's, else 0."""
    done = phase_dir / "done.json"
    if done.is_file():
        return int(json.loads(done.read_text(encoding="utf-8"))["steps"])
    checkpoints = checkpoint_dirs(phase_dir)
    return checkpoint_step(checkpoints[-1]) if checkpoints else 0


def own_outputs(run_dir: Path) -> set[Path]:
    """The outputs the run in `run_dir` was started for (its config.json): a rerun of the same
    run replaces them without --force."""
    try:
        outputs = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["outputs"]
        return {Path(path).resolve() for path in outputs.values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def claim_run_dir(run_dir: Path, fingerprint: dict, force: bool) -> bool:
    """Resume only a run of the same configuration (`resumable`); with --force, restart a different one.

    Returns True when the run directory holds another run that must be cleared first."""
    config = run_dir / "config.json"
    if not config.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise InputError(f"{run_dir}: run directory exists and was not made by `wdctl compress`; "
                             "choose another --run-dir")
        return False
    try:
        previous = json.loads(config.read_text(encoding="utf-8")).get("fingerprint")
    except (json.JSONDecodeError, OSError, AttributeError):
        previous = None
    if not isinstance(previous, dict):
        raise InputError(f"{run_dir}: run directory exists and was not made by `wdctl compress`; "
                         "choose another --run-dir")
    previous, fingerprint = resumable(previous), resumable(fingerprint)
    if previous == fingerprint:
        return False
    changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
    if not force:
        raise InputError(f"{run_dir}: holds a run with different settings ({', '.join(changed)}); pass --force "
                         "to start it over, or choose another --run-dir")
    return True
