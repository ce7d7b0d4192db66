"""`wdctl compress`: teacher → distilled data → student (wd | kd | cut-kd) → MarianMT dir (+ ONNX).

Steps, in order (everything that can be checked without heavy work is checked first):

1. Validate: teacher config (Marian only), student shape against the teacher, method, training
   options, output directories, data. One-line `InputError` (exit 2) for anything wrong, before
   any weight is loaded or anything is written.
2. Plan (`GroupPlan`) and the resource guard: the plan's phase-1 memory estimate against the
   available RAM; refuse with the estimate when it does not fit (wd only).
3. Distilled data: the teacher translates the training source side (beam search, cached; see
   `wdctl.passes.distill`). Every method trains on original ∪ distilled pairs.
4. The method (`METHODS` registry), phase by phase. Each phase trains through the shared loop
   (`wdctl.passes.training.train`: label-smoothed CE, optional word-level KD, Adam(0.9, 0.98),
   inverse-sqrt) and checkpoints into its own run subdirectory; a phase that finished leaves
   `done.json` and its student in `PHASE/student`, so rerunning the same command after Ctrl-C
   resumes the interrupted phase and skips finished ones.
     - wd:     phase1 (GeneratedStudent: teacher frozen, only the generators train)
               → materialize → phase2 (all student parameters).
     - kd:     random-init student, one phase `train` of phase1+phase2 steps.
     - cut-kd: student cut from the teacher (cutoff.cut_teacher), one phase `train` of
               phase1+phase2 steps.
   The baselines use the phase-1 schedule (lr, warm-up, batch) for their whole budget: it is the
   schedule for training a model from the start.
5. Output: a standard MarianMT directory at OUT (config.json, model.safetensors, tokenizer,
   generation_config.json), test BLEU (greedy and beam) when the corpus has a test split, and,
   with `export=True`, the ONNX fp32 package at `OUT.onnx/` and the quantized one at
   `OUT.int8/` (made by `wdctl.export`), whose BLEU is scored again (quantization can break a
   model).

Under `torchrun` (or `wdctl compress --nproc N`) every rank validates, distills its share of
the chunks and trains its share of each batch (`wdctl.passes.distributed`); rank 0 alone writes
the run directory, the outputs and the scores.

Run directory (default `OUT.run/`): config.json (inputs, shapes, schedules, versions),
plan.txt/plan.json (wd), PHASE/{checkpoints,log.jsonl,done.json,student}, metrics.json
(per-phase steps, wall and training time, peak RSS; loss of a fixed probe batch before and
after each phase; BLEU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from wdctl.core.atomic import atomic_dir, check_output_dir
from wdctl.config import train_config
from wdctl.core.corpus import Pair, read_parallel, require_pairs
from wdctl.core.errors import InputError
from wdctl.core.metrics import score_bleu
from wdctl.passes.distributed import Distributed, check_accum, distributed
from wdctl.passes.marian import count_parameters, load_marian_config
from wdctl.passes.student import StudentSpec, check_teacher, resolve_student, student_config
from wdctl.passes.training import TrainConfig, collate, sequence_loss
from wdctl.core.runinfo import peak_rss_mb, versions, write_json

# CPU-sized defaults. The release uses peak lr 7e-4 with warm-up 4000 (phase 1) and 1000
# (phase 2) on GPU-sized batches; on a 2-core CPU wdctl keeps the lr and the 4:1 warm-up ratio
# at a tenth of the length. Pass --phase1-warmup 4000 --phase2-warmup 1000 for the paper's.
DEFAULT_PHASE1 = TrainConfig(max_steps=2000, max_tokens=2500, lr=7e-4, warmup=400, eval_every=500,
                             save_every=100, log_every=20)
DEFAULT_PHASE2 = TrainConfig(max_steps=2000, max_tokens=2500, lr=7e-4, warmup=100, eval_every=500,
                             save_every=100, log_every=20)
PHASES = ("phase1", "phase2")
MAX_LENGTH = 256  # tokens per training sentence (longer ones are cut)
PROBE_SIZE = 64  # sentence pairs in the fixed batch whose loss is reported before/after each phase


def default_cache_dir() -> Path:
    """Where distilled data is cached: $WDCTL_CACHE_DIR, else $XDG_CACHE_HOME/wdctl, else ~/.cache/wdctl."""
    root = os.environ.get("WDCTL_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wdctl"
    return Path(root) / "distilled"


# --- configuration -----------------------------------------------------------------------------

def phase_configs(options: dict | None = None, base: tuple[TrainConfig, TrainConfig] = (DEFAULT_PHASE1, DEFAULT_PHASE2)
                  ) -> tuple[TrainConfig, TrainConfig]:
    """Phase schedules from a mapping: TrainConfig keys at the top level apply to both phases,
    `phase1:`/`phase2:` sections to one (and win). This is also the `--config` YAML layout."""
    options = dict(options or {})
    sections = {name: options.pop(name, None) or {} for name in PHASES}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise InputError(f"training options: '{name}' must be a mapping of option: value")
    out = []
    for name, cfg in zip(PHASES, base):
        cfg = train_config(cfg, options, "training options")
        out.append(train_config(cfg, sections[name], f"training options, {name}"))
    return out[0], out[1]


def baseline_config(phase1: TrainConfig, phase2: TrainConfig) -> TrainConfig:
    """The kd / cut-kd schedule: phase 1's schedule with the budget of both phases."""
    minutes = phase1.max_minutes + phase2.max_minutes if phase1.max_minutes and phase2.max_minutes else 0.0
    return replace(phase1, max_steps=phase1.max_steps + phase2.max_steps, max_minutes=minutes)


# Options that may change between a run and its resumption (they do not change what is trained).
_VOLATILE = ("threads", "eval_every", "save_every", "log_every", "max_minutes", "device")


def _schedule_fingerprint(cfg: TrainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _VOLATILE}


def load_teacher_config(teacher_dir: Path):
    """The teacher's MarianConfig (checked like `load_marian`) and fit to be a WD teacher."""
    config = load_marian_config(teacher_dir)
    try:
        check_teacher(config)
    except InputError as exc:
        raise InputError(f"{teacher_dir}: {exc}") from None
    return config


def _optional_split(data: str, split: str) -> list[Pair] | None:
    """A corpus directory's `split` if it has one; None for files and directories without it."""
    path = Path(data)
    if not path.is_dir() or not (list(path.glob(f"{split}.*tsv*")) or list(path.glob(f"{split}.tsv*"))):
        return None
    return read_parallel(path, split)


def _union(original: list[Pair], distilled: list[Pair]) -> list[Pair]:
    """original ∪ distilled, order kept, exact duplicates (teacher reproduced the reference) once."""
    seen, out = set(), []
    for pair in (*original, *distilled):
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


# --- memory ------------------------------------------------------------------------------------

def available_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _fmt_gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_memory(plan, available: int | None = None) -> dict:
    """The resource guard: refuse phase 1 when the plan's estimate exceeds the available RAM."""
    estimate = plan.estimate_phase1_bytes()
    available = available_bytes() if available is None else available
    if estimate > available:
        raise InputError(
            f"phase 1 needs about {_fmt_gib(estimate)} (generators, their Adam state and gradients, teacher, "
            f"student; before activations) but only {_fmt_gib(available)} is available; choose a smaller "
            f"student, a smaller --subset-mb, or a machine with more memory"
        )
    return {"phase1_estimate_bytes": estimate, "available_bytes": available}


class PeakRSS:
    """Peak resident memory of this process during a block.

    Linux lets a process reset its high-water mark (`echo 5 > /proc/self/clear_refs`, then read
    VmHWM); elsewhere a background thread samples psutil's RSS every 50 ms.
    """

    def __enter__(self) -> "PeakRSS":
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._hwm = True
        except OSError:
            self._hwm = False
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while not self._stop.wait(0.05):
            self._samples.append(process.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def peak_mb(self) -> float:
        if self._hwm:
            return peak_rss_mb()
        import psutil

        return max(self._samples + [psutil.Process().memory_info().rss]) / 2**20


# --- the job -----------------------------------------------------------------------------------

@dataclass
class Job:
    """Everything the methods need; filled in by `compress`."""

    teacher_dir: Path
    teacher_config: object
    spec: StudentSpec
    student_config: object
    method: str
    phase1: TrainConfig
    phase2: TrainConfig
    run_dir: Path
    plan: object = None
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


def _dev_evaluator(job: Job, to_marian: Callable[[nn.Module], nn.Module]):
    if not job.dev_pairs or job.eval_sentences <= 0:
        return None
    from wdctl.teacher import dev_bleu_evaluator

    evaluate = dev_bleu_evaluator(job.tokenizer, job.dev_pairs[: job.eval_sentences], beams=1)
    return lambda model: evaluate(to_marian(model))


def _load_student(path: Path):
    from transformers import MarianMTModel

    return MarianMTModel.from_pretrained(path, use_safetensors=True).eval()


def run_phase(job: Job, name: str, build: Callable[[], nn.Module], cfg: TrainConfig,
              finish: Callable[[nn.Module], nn.Module] = lambda m: m,
              to_marian: Callable[[nn.Module], nn.Module] = lambda m: m) -> nn.Module:
    """Train one phase (or skip it if `done.json` says it finished) and return its student.

    `build` makes the model to train (called only when the phase has to run), `finish` turns
    the trained model into a MarianMTModel (materialization for phase 1), `to_marian` does the
    same cheaply for dev evaluation during training.
    """
    from transformers import MarianMTModel

    from wdctl.passes.marian import freeze_pad_row
    from wdctl.passes.training import checkpoint_dirs, train

    phase_dir = job.run_dir / name
    done = phase_dir / "done.json"
    if done.is_file():
        job.phases[name] = {**json.loads(done.read_text(encoding="utf-8")), "skipped": True}
        if job.dist.is_main:
            print(f"{job.method}:{name}: finished earlier, reusing {phase_dir / 'student'}")
        return _load_student(phase_dir / "student")

    started = time.perf_counter()
    with PeakRSS() as memory:
        model = build()
        if isinstance(model, MarianMTModel):
            freeze_pad_row(model)  # keep the <pad>/start row at zero while training
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        fresh = not checkpoint_dirs(phase_dir)
        before = probe_loss(model, job.probe, job.pad_id, job.start_id, cfg.label_smoothing) if fresh else None
        result = train(model, job.examples, cfg, phase_dir, pad_id=job.pad_id, start_id=job.start_id,
                       evaluate=_dev_evaluator(job, to_marian),
                       teacher=job.teacher if cfg.kd_weight > 0 else None, desc=f"{job.method}:{name}")
        after = probe_loss(model, job.probe, job.pad_id, job.start_id, cfg.label_smoothing)
        student = finish(model).to("cpu")  # train() may have moved it to --device
        if student is not model:
            freeze_pad_row(student)
        del model
        if job.teacher is not None:
            job.teacher.to("cpu")
    info = {
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 2),  # summed over resumptions
        "wall_seconds": round(time.perf_counter() - started, 2),  # this invocation, build + train + finish
        "peak_rss_mb": round(memory.peak_mb, 1),
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


# --- methods -----------------------------------------------------------------------------------

def _teacher_state(job: Job) -> dict:
    return job.teacher.state_dict()


def run_wd(job: Job) -> nn.Module:
    """Phase 1 trains the parameter generators (teacher frozen), phase 2 the materialized student."""
    from wdctl.passes.generator import GeneratedStudent, ParameterGenerator, materialize_student

    def build_generated():
        return GeneratedStudent(ParameterGenerator(_teacher_state(job), job.plan, seed=job.phase1.seed))

    def materialize(model):
        return materialize_student(model.generator, job.student_config)

    generated = run_phase(job, "phase1", build_generated, job.phase1, finish=materialize, to_marian=materialize)
    return run_phase(job, "phase2", lambda: generated, job.phase2)


def run_kd(job: Job) -> nn.Module:
    """Sequence-level KD: a randomly initialised student trained for phase1+phase2 steps."""
    from transformers import MarianMTModel

    def build():
        torch.manual_seed(job.phase1.seed)
        return MarianMTModel(job.student_config)

    return run_phase(job, "train", build, baseline_config(job.phase1, job.phase2))


def run_cut_kd(job: Job) -> nn.Module:
    """Cut-off init + KD: the student sliced from the teacher, trained for phase1+phase2 steps."""
    from wdctl.passes.cutoff import cut_teacher

    def build():
        return cut_teacher(_teacher_state(job), job.teacher_config, job.student_config)

    return run_phase(job, "train", build, baseline_config(job.phase1, job.phase2))


@dataclass(frozen=True)
class Method:
    run: Callable[[Job], nn.Module]
    phases: tuple[str, ...]
    needs_generator: bool
    help: str


METHODS: dict[str, Method] = {
    "wd": Method(run_wd, ("phase1", "phase2"), True,
                 "weight distillation: generator phase 1, materialize, fine-tune phase 2"),
    "kd": Method(run_kd, ("train",), False, "random-init student, phase1+phase2 steps (baseline)"),
    "cut-kd": Method(run_cut_kd, ("train",), False,
                     "student cut from the teacher (every r-th layer, leading rows/columns), phase1+phase2 steps"),
}


# --- evaluation and export ---------------------------------------------------------------------

def _export_modules():
    try:
        from wdctl.export.decode import OrtTranslator
        from wdctl.export.onnx_export import export_onnx
        from wdctl.export.quantize import quantize_package
    except ImportError as exc:
        raise InputError(
            f"ONNX export is not available in this installation ({exc}); pass --no-export to skip it"
        ) from None
    return export_onnx, quantize_package, OrtTranslator


def export_paths(out: Path, quantize: str | None) -> dict[str, Path]:
    """`OUT.onnx/` (fp32 ONNX package) and `OUT.<mode>/` (quantized, e.g. `OUT.int8/`)."""
    paths = {"onnx": out.with_name(out.name + ".onnx")}
    if quantize:
        paths[quantize] = out.with_name(f"{out.name}.{quantize}")
    return paths


# --- the entry point ---------------------------------------------------------------------------

def compress(
    teacher_dir: Path | str,
    data: str | Path | None,
    out: Path | str | None,
    *,
    student: str | dict | StudentSpec = "small",
    method: str = "wd",
    phase1: TrainConfig = DEFAULT_PHASE1,
    phase2: TrainConfig = DEFAULT_PHASE2,
    run_dir: Path | str | None = None,
    force: bool = False,
    export: bool = True,
    quantize: str | None = "int8",
    dry_run: bool = False,
    cache_dir: Path | str | None = None,
    distill_beams: int = 4,
    distill_batch_size: int = 32,
    length_penalty: float = 1.0,
    fast_distill: bool = False,
    eval_beams: int = 4,
    eval_sentences: int = 0,
    test_sentences: int = 0,
    subset_bytes: int | None = None,
    threads: int = 0,
    progress: bool = True,
) -> dict:
    """Compress `teacher_dir` into a student at `out`; returns the metrics (also in the run dir).

    With `dry_run` only the plan and the memory estimate are computed and returned
    (`data` and `out` may be None). `eval_sentences` dev pairs are translated (greedy) at each
    evaluation during training (0 = no dev evaluation); `test_sentences` caps the test set
    (0 = all of it).
    """
    from wdctl.passes.grouping import DEFAULT_SUBSET_BYTES, GroupPlan

    # 1. validation, cheap and in order of the command line
    teacher_dir = Path(teacher_dir)
    teacher_config = load_teacher_config(teacher_dir)
    spec = resolve_student(student, teacher_config)
    s_config = student_config(teacher_config, spec)
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    phase1, phase2 = replace(phase1).validate(), replace(phase2).validate()
    if threads:
        phase1, phase2 = replace(phase1, threads=threads), replace(phase2, threads=threads)
    if quantize in ("", "none"):
        quantize = None
    if distill_beams < 1 or eval_beams < 1:
        raise InputError("beam sizes must be >= 1")
    plan = GroupPlan.build(teacher_config, s_config, subset_bytes=subset_bytes or DEFAULT_SUBSET_BYTES)
    memory = {"phase1_estimate_bytes": plan.estimate_phase1_bytes(), "available_bytes": available_bytes()}
    summary = {
        "method": method,
        "teacher": StudentSpec.from_config(teacher_config).to_dict(),
        "student": spec.to_dict(),
        "teacher_parameters": count_parameters(teacher_config),
        "student_parameters": count_parameters(s_config),
        "generator_parameters": plan.total_generator_params,
    }
    if dry_run:
        return {**summary, "dry_run": True, "plan": plan.to_dict(), "plan_text": plan.format(), **memory}

    if data is None or out is None:
        raise InputError("--data and --out are required (except with --dry-run)")
    dist = distributed(phase1.device)
    check_accum(phase1.accum, dist.world, "phase1")
    check_accum(phase2.accum, dist.world, "phase2")
    out = Path(out)
    run_dir = Path(run_dir) if run_dir else out.with_name(out.name + ".run")
    if not (teacher_dir / "model.safetensors").is_file():
        raise InputError(f"{teacher_dir}: no model.safetensors")
    outputs = {"model": out, **(export_paths(out, quantize) if export else {})}
    for path in outputs.values():
        check_output_dir(path, force)
    if export:
        _export_modules()
        import wdctl.export.quantize as quantize_module

        modes = getattr(quantize_module, "MODES", None)
        if quantize and modes and quantize not in modes:
            raise InputError(f"unknown quantization mode '{quantize}' (choose from {', '.join(modes)}, or none)")
    train_pairs = require_pairs(read_parallel(data, "train"), 2, str(data))
    dev_pairs, test_pairs = _optional_split(str(data), "dev"), _optional_split(str(data), "test")
    if test_pairs and test_sentences:
        test_pairs = test_pairs[:test_sentences]
    if METHODS[method].needs_generator:
        check_memory(plan, memory["available_bytes"])

    distill_settings = {"beams": distill_beams, "length_penalty": length_penalty, "max_length": MAX_LENGTH,
                        "fast": fast_distill}
    fingerprint = {
        "teacher_dir": str(teacher_dir.resolve()), "data": str(Path(data).resolve()) if Path(data).exists() else str(data),
        "method": method, "student": spec.to_dict(), "distill": distill_settings,
        "phase1": _schedule_fingerprint(phase1), "phase2": _schedule_fingerprint(phase2),
        "subset_bytes": plan.subset_bytes,
    }
    fingerprint = _jsonable(fingerprint)  # as it reads back from config.json (tuples become lists)
    start_over = _claim_run_dir(run_dir, fingerprint, force)
    dist.barrier()  # every rank has checked the run directory before rank 0 changes it
    if dist.is_main:
        if start_over:
            shutil.rmtree(run_dir)
        write_json(run_dir / "config.json", {
            "fingerprint": fingerprint, "phase1": dataclasses.asdict(phase1), "phase2": dataclasses.asdict(phase2),
            "outputs": {k: str(v) for k, v in outputs.items()}, "export": export, "quantize": quantize,
            "eval_beams": eval_beams, "eval_sentences": eval_sentences, "threads": threads, "processes": dist.world,
            **summary, "versions": versions(),
        })
        if METHODS[method].needs_generator:
            (run_dir / "plan.txt").write_text(plan.format() + "\n", encoding="utf-8")
            write_json(run_dir / "plan.json", plan.to_dict())
    dist.barrier()

    # 2. teacher, distilled data, examples
    from wdctl.passes.distill import distill
    from wdctl.passes.marian import generation_config, load_marian, save_marian
    from wdctl.passes.translate import translate_torch
    from wdctl.passes.vocab import encode_pairs

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    metrics: dict = {**summary, "memory_check": memory}
    torch_threads = torch.get_num_threads()  # the ONNX backend holds torch to one thread
    distilled = distill(teacher_dir, train_pairs, cache_dir or default_cache_dir(), beams=distill_beams,
                        batch_size=distill_batch_size, max_length=MAX_LENGTH, length_penalty=length_penalty,
                        fast=fast_distill, threads=threads or 1, device=phase1.device, progress=progress)
    metrics["distill"] = {"cache": str(distilled.path), "reused": distilled.reused, "translated": distilled.translated,
                          "seconds": round(distilled.seconds, 2), "backend": distilled.backend,
                          "pairs": len(distilled.pairs)}
    torch.set_num_threads(torch_threads)
    teacher, tokenizer = load_marian(teacher_dir)
    teacher.requires_grad_(False)
    pairs = _union(train_pairs, distilled.pairs)
    examples, _ = encode_pairs(tokenizer, pairs, MAX_LENGTH)
    probe_pairs = (dev_pairs or train_pairs)[:PROBE_SIZE]
    probe, _ = encode_pairs(tokenizer, probe_pairs, MAX_LENGTH)
    metrics["training_pairs"] = {"original": len(train_pairs), "distilled": len(distilled.pairs), "union": len(pairs)}

    # 3. the method
    job = Job(teacher_dir=teacher_dir, teacher_config=teacher_config, spec=spec, student_config=s_config,
              method=method, phase1=phase1, phase2=phase2, run_dir=run_dir, plan=plan, teacher=teacher,
              tokenizer=tokenizer, examples=examples, probe=probe, dev_pairs=dev_pairs,
              eval_sentences=eval_sentences, dist=dist)
    model = METHODS[method].run(job)
    metrics["phases"] = job.phases
    del job
    model.generation_config = generation_config(model.config)
    if not dist.is_main:  # rank 0 alone writes, scores and exports
        return {}

    # 4. outputs and scores
    with atomic_dir(out, force=force) as tmp:
        save_marian(model, tokenizer, tmp)
    if test_pairs:
        def translate(sentences, beams):
            return translate_torch(model, tokenizer, sentences, beams=beams, batch_size=64, progress=progress)

        metrics.update(score_bleu(translate, test_pairs, sorted({1, eval_beams}), "test"))
        metrics["test_sentences"] = len(test_pairs)
    if export:
        metrics["exports"] = _export(out, outputs, quantize, force, test_pairs, eval_beams, threads)
    metrics["total_wall_seconds"] = round(time.perf_counter() - started, 2)
    metrics["outputs"] = {k: str(v) for k, v in outputs.items()}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _export(out, outputs, quantize, force, test_pairs, eval_beams, threads) -> dict:
    export_onnx, quantize_package, OrtTranslator = _export_modules()
    info = {"onnx": export_onnx(out, outputs["onnx"], force=force)}
    if quantize:
        info[quantize] = quantize_package(outputs["onnx"], outputs[quantize], mode=quantize, force=force)
        if test_pairs:
            translator = OrtTranslator(outputs[quantize], threads=threads or 1)

            def translate(sentences, beams):
                return translator.translate(sentences, beams, 64, MAX_LENGTH, 1.0)

            info[f"{quantize}_scores"] = score_bleu(translate, test_pairs, [eval_beams], f"{quantize}_test")
            del translator
    return _jsonable(info)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _claim_run_dir(run_dir: Path, fingerprint: dict, force: bool) -> bool:
    """Resume only a run of the same configuration; with --force, restart a different one.

    Returns True when the run directory holds another run that must be cleared first."""
    config = run_dir / "config.json"
    if not config.is_file():
        if run_dir.exists() and any(run_dir.iterdir()):
            raise InputError(f"{run_dir}: run directory exists and was not made by `wdctl compress`; "
                             "choose another --run-dir")
        return False
    try:
        previous = json.loads(config.read_text(encoding="utf-8")).get("fingerprint")
    except (json.JSONDecodeError, OSError):
        previous = None
    if previous == fingerprint:
        return False
    if previous is None:
        raise InputError(f"{run_dir}: run directory exists and was not made by `wdctl compress`; "
                         "choose another --run-dir")
    changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
    if not force:
        raise InputError(f"{run_dir}: holds a run with different settings ({', '.join(changed)}); pass --force "
                         "to start it over, or choose another --run-dir")
    return True
