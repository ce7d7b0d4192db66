"""`wdctl compress`: teacher → distilled data → student (wd | kd | cut-kd) → MarianMT dir (+ ONNX).

Steps, in order (everything that can be checked without heavy work is checked first):

1. Validate: settings (`CompressSettings.validate`), teacher config (Marian only), student
   shape against the teacher, output directories, data. One-line `InputError` (exit 2) for
   anything wrong, before any weight is loaded or anything is written.
2. Plan (`GroupPlan`) and the resource guard: each phase's peak-memory estimate (weights,
   optimizer state and the activations of a --max-tokens batch; `phase_memory`) against the
   available RAM; refuse with the estimate when one does not fit.
3. Distilled data: the teacher translates the training source side (beam search, cached; see
   `wdctl.passes.distill`). Every method trains on original ∪ distilled pairs.
4. The method (`wdctl.passes.methods.METHODS`), phase by phase, each resumable
   (`wdctl.passes.phases`): rerunning the same command after Ctrl-C resumes the interrupted
   phase and skips finished ones; rerun with a larger --phase2-steps, a finished run trains its
   last phase on (inverse-sqrt) and replaces the outputs it wrote.
5. Output: a standard MarianMT directory at OUT (config.json, model.safetensors, tokenizer,
   generation_config.json), test BLEU (greedy and beam) when the corpus has a test split, and,
   with `export=True`, the ONNX fp32 package at `OUT.onnx/` and the quantized one at
   `OUT.int8/` (`wdctl.export.build.build_package`), whose BLEU is scored again
   (quantization can break a model).

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
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from wdctl.config import DEFAULT_PHASE1, DEFAULT_PHASE2, default_cache_dir
from wdctl.core.atomic import atomic_dir, check_output_dir, run_dir_of
from wdctl.core.corpus import Pair, optional_split, read_parallel, require_pairs
from wdctl.core.errors import InputError
from wdctl.core.metrics import score_bleu
from wdctl.core.runinfo import available_bytes, versions, write_json
from wdctl.export.build import OnnxTeacher, build_package, package_translator
from wdctl.export.quantize import MODES
from wdctl.passes.distill import distill
from wdctl.passes.distributed import check_accum, distributed
from wdctl.passes.grouping import DEFAULT_SUBSET_BYTES, GENERATOR_FORMS, GroupPlan, generator_sizes
from wdctl.passes.marian import check_model_dir, generation_config, load_marian, load_marian_config, save_marian
from wdctl.passes.methods import (METHODS, START_FILE, STARTS_FROM_TEACHER, choose_start, load_start, refit_start,
                                  save_start)
from wdctl.passes.narrow_marian import count_parameters
from wdctl.passes.selection import SELECTIONS
from wdctl.passes.shortlist import FILE as SHORTLIST_FILE
from wdctl.passes.phases import (Job, check_memory, claim_run_dir, jsonable, own_outputs, schedule_fingerprint,
                                 trained_steps)
from wdctl.passes.student import STUDENT_PRESETS, StudentSpec, resolve_student, size_note, student_config
from wdctl.passes.training import TrainConfig, check_budget
from wdctl.passes.translate import torch_bleu
from wdctl.passes.vocab import encode_pairs
from wdctl.recipes.shortlist import model_shortlist

MAX_LENGTH = 256  # tokens per training sentence (longer ones are cut)
PROBE_SIZE = 64  # sentence pairs in the fixed batch whose loss is reported before/after each phase
CALIBRATION_SENTENCES = 200  # source sentences int8's activation ranges are measured on (as `wdctl export --data`)


@dataclass
class CompressSettings:
    """Everything `compress` needs. `dry_run`: only the plan and the memory estimate (`data`
    and `out` may be None). `eval_sentences` dev pairs are translated (greedy) at each
    evaluation during training (0 = none); `test_sentences` caps the test set (0 = all)."""

    teacher_dir: Path
    data: str | None
    out: Path | None
    student: str | dict | StudentSpec = "small"
    method: str = "wd"
    generator: str = "coherent"  # grouping.GENERATOR_FORMS
    start: str = "leading"  # selection.SELECTIONS: the student's start slice of the teacher
    refit_output: bool = False  # the start's top decoder layer refitted to the teacher's output (refit.py)
    phase1: TrainConfig = field(default_factory=lambda: DEFAULT_PHASE1)
    phase2: TrainConfig = field(default_factory=lambda: DEFAULT_PHASE2)
    run_dir: Path | None = None
    force: bool = False
    export: bool = True
    quantize: str | None = "int8"
    dry_run: bool = False
    cache_dir: Path | None = None
    distill_beams: int = 4
    distill_sentences: int = 0  # the teacher translates the first N training sources (0 = all)
    distill_batch_size: int = 32
    length_penalty: float = 1.0
    fast_distill: bool = False  # the teacher distils through its ONNX export
    eval_beams: int = 4
    eval_sentences: int = 0
    test_sentences: int = 0
    subset_bytes: int | None = None
    threads: int = 0
    progress: bool = True

    def validate(self) -> "CompressSettings":
        """A checked copy: paths as Paths, schedules validated (with `threads`), quantize None or a mode."""
        if self.method not in METHODS:
            raise InputError(f"unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        for name, value, choices in (("generator", self.generator, GENERATOR_FORMS), ("start", self.start, SELECTIONS)):
            if value not in choices:
                raise InputError(f"unknown {name} '{value}'; choose one of {', '.join(choices)}")
        if self.refit_output and (self.method not in STARTS_FROM_TEACHER or self.generator != "coherent"):
            raise InputError(f"--refit-output refits the teacher slice a student starts from: methods "
                             f"{', '.join(STARTS_FROM_TEACHER)} (wd with the coherent generator), not {self.method}"
                             + (f" with the {self.generator} generator" if self.method == "wd" else ""))
        threads = {"threads": self.threads} if self.threads else {}
        quantize = None if self.quantize in ("", "none") else self.quantize
        if self.distill_beams < 1 or self.eval_beams < 1:
            raise InputError("beam sizes must be >= 1")
        if self.distill_sentences < 0:
            raise InputError(f"--distill-sentences must be >= 0 (got {self.distill_sentences})")
        return replace(self, teacher_dir=Path(self.teacher_dir), out=Path(self.out) if self.out else None,
                       run_dir=Path(self.run_dir) if self.run_dir else None, quantize=quantize,
                       phase1=replace(self.phase1.validate(), **threads),
                       phase2=replace(self.phase2.validate(), **threads))


def export_paths(out: Path, quantize: str | None) -> dict[str, Path]:
    """`OUT.onnx/` (fp32 ONNX package) and `OUT.<mode>/` (quantized, e.g. `OUT.int8/`)."""
    paths = {"onnx": out.with_name(out.name + ".onnx")}
    if quantize:
        paths[quantize] = out.with_name(f"{out.name}.{quantize}")
    return paths


def phase_memory(plan: GroupPlan, s: CompressSettings) -> dict:
    """Each training phase's estimated peak memory, for its own --max-tokens and precision
    (`GroupPlan.phase_memory`: wd's phase 1 trains the generators; every other phase, and the one
    phase of kd and cut-kd, which runs on the phase-1 schedule, trains a plain student), with the
    RAM available now."""
    generator = METHODS[s.method].needs_generator
    phases = {}
    for name, cfg in (("phase1", s.phase1), ("phase2", s.phase2)):
        parts = plan.phase_memory("phase1" if generator and name == "phase1" else "phase2", cfg.max_tokens,
                                  cfg.precision, cfg.teacher_loss)
        phases[name] = {"max_tokens": cfg.max_tokens, "precision": cfg.precision, "bytes": parts,
                        "total_bytes": sum(parts.values())}
    return {"phases": phases, "available_bytes": available_bytes()}


def preset_of(student: str | dict | StudentSpec, spec: StudentSpec, teacher_config) -> str | None:
    """The preset `student` names, if the shape is that preset's (no overriding shape flags)."""
    name = student if isinstance(student, str) else student.get("preset") if isinstance(student, dict) else None
    if name not in STUDENT_PRESETS:
        return None
    return name if resolve_student(name, teacher_config) == spec else None


def compress(settings: CompressSettings) -> dict:
    """Compress the teacher into a student at `settings.out`; returns the metrics (also in the run dir)."""
    s = settings.validate()
    # 1. validation, cheap and in order of the command line
    teacher_config = load_marian_config(s.teacher_dir, teacher=True)
    spec = resolve_student(s.student, teacher_config)
    s_config = student_config(teacher_config, spec)
    subset_bytes = s.subset_bytes or DEFAULT_SUBSET_BYTES
    plan = GroupPlan.build(teacher_config, s_config, subset_bytes=subset_bytes, generator=s.generator)
    memory = phase_memory(plan, s)
    summary = {"method": s.method, "generator": s.generator, "start": s.start, "refit_output": s.refit_output,
               "teacher": StudentSpec.from_config(teacher_config).to_dict(), "student": spec.to_dict(),
               "teacher_parameters": count_parameters(teacher_config), "student_parameters": count_parameters(s_config),
               "generator_parameters": plan.total_generator_params,
               "generator_sizes": generator_sizes(teacher_config, s_config, subset_bytes)}
    if s.dry_run:
        return {**summary, "dry_run": True, "plan": plan.to_dict(), "plan_text": plan.format(), "memory": memory,
                "size_note": size_note(preset_of(s.student, spec, teacher_config), teacher_config)}
    if s.data is None or s.out is None:
        raise InputError("--data and --out are required (except with --dry-run)")
    dist = distributed(s.phase1.device)
    check_accum(s.phase1.accum, dist.world, "phase1")
    check_accum(s.phase2.accum, dist.world, "phase2")
    run_dir = s.run_dir or run_dir_of(s.out)
    check_model_dir(s.teacher_dir)
    outputs = {"model": s.out, **(export_paths(s.out, s.quantize) if s.export else {})}
    fingerprint = jsonable({  # as it reads back from config.json (tuples become lists)
        "teacher_dir": str(s.teacher_dir.resolve()),
        "data": str(Path(s.data).resolve()) if Path(s.data).exists() else str(s.data),
        "method": s.method, "generator": s.generator, "start": s.start, "student": spec.to_dict(),
        "distill": {"beams": s.distill_beams, "length_penalty": s.length_penalty, "max_length": MAX_LENGTH,
                    "fast": s.fast_distill, "sentences": s.distill_sentences},
        "phase1": schedule_fingerprint(s.phase1), "phase2": schedule_fingerprint(s.phase2),
        "subset_bytes": plan.subset_bytes,
        **({"refit_output": True} if s.refit_output else {}),  # absent when off: older run dirs still resume
    })
    start_over = claim_run_dir(run_dir, fingerprint, s.force)
    # a rerun of the same run (e.g. with a larger --phase2-steps) replaces the outputs it wrote
    ours = set() if start_over else own_outputs(run_dir)
    if not start_over:  # a budget below what the run has trained is refused before anything is rewritten
        last, last_cfg = METHODS[s.method].last_phase(s.phase1, s.phase2)
        check_budget(run_dir / last, trained_steps(run_dir / last), last_cfg)
    replace_outputs = s.force or all(path.resolve() in ours for path in outputs.values())
    for path in outputs.values():
        check_output_dir(path, replace_outputs)
    if s.export and s.quantize and s.quantize not in MODES:
        raise InputError(f"unknown quantization mode '{s.quantize}' (choose from {', '.join(MODES)}, or none)")
    train_pairs = require_pairs(read_parallel(s.data, "train"), 2, str(s.data))
    dev_pairs, test_pairs = optional_split(str(s.data), "dev"), optional_split(str(s.data), "test")
    if test_pairs and s.test_sentences:
        test_pairs = test_pairs[: s.test_sentences]
    needs_generator = METHODS[s.method].needs_generator
    check_memory({name: phase["total_bytes"] for name, phase in memory["phases"].items()}, memory["available_bytes"])

    dist.barrier()  # every rank has checked the run directory before rank 0 changes it
    if dist.is_main:
        if start_over:
            shutil.rmtree(run_dir)
        write_json(run_dir / "config.json", {
            "fingerprint": fingerprint, "phase1": dataclasses.asdict(s.phase1), "phase2": dataclasses.asdict(s.phase2),
            "outputs": {k: str(v) for k, v in outputs.items()}, "export": s.export, "quantize": s.quantize,
            "eval_beams": s.eval_beams, "eval_sentences": s.eval_sentences, "threads": s.threads,
            "processes": dist.world, **summary, "versions": versions(),
        })
    dist.barrier()

    # 2. teacher, distilled data, examples
    if s.threads:
        torch.set_num_threads(s.threads)
    started = time.perf_counter()
    metrics: dict = {**summary, "memory_check": memory}
    torch_threads = torch.get_num_threads()  # the ONNX backend holds torch to one thread
    distilled = distill(s.teacher_dir, train_pairs[: s.distill_sentences or None], s.cache_dir or default_cache_dir(),
                        beams=s.distill_beams, batch_size=s.distill_batch_size, max_length=MAX_LENGTH, length_penalty=s.length_penalty,
                        backend=OnnxTeacher() if s.fast_distill else None, threads=s.threads or torch_threads,
                        device=s.phase1.device, progress=s.progress)
    metrics["distill"] = {"cache": str(distilled.path), "reused": distilled.reused, "translated": distilled.translated,
                          "seconds": round(distilled.seconds, 2), "backend": distilled.backend,
                          "pairs": len(distilled.pairs)}
    torch.set_num_threads(torch_threads)
    teacher, tokenizer = load_marian(s.teacher_dir)
    teacher.requires_grad_(False)
    pairs = distilled.training_pairs(train_pairs)
    examples, _ = encode_pairs(tokenizer, pairs, MAX_LENGTH)
    probe, _ = encode_pairs(tokenizer, (dev_pairs or train_pairs)[:PROBE_SIZE], MAX_LENGTH)
    metrics["training_pairs"] = {"original": len(train_pairs), "distilled": len(distilled.pairs), "union": len(pairs)}

    # 3. the method
    job = Job(teacher_dir=s.teacher_dir, teacher_config=teacher_config, spec=spec, student_config=s_config,
              method=s.method, phase1=s.phase1, phase2=s.phase2, run_dir=run_dir, plan=plan, teacher=teacher,
              tokenizer=tokenizer, examples=examples, probe=probe, dev_pairs=dev_pairs,
              eval_sentences=s.eval_sentences, dist=dist)
    computed_start = s.start != "leading" or s.refit_output
    if computed_start and (run_dir / START_FILE).is_file():  # a resumption: the start it was given
        load_start(job, run_dir / START_FILE)
    elif computed_start:
        if s.start != "leading":  # rank the teacher's coordinates and layers on a few batches
            choose_start(job, layers="block" if s.start == "block-importance" else "loss")
        if s.refit_output:
            refit_start(job)
        if dist.is_main:
            save_start(job, run_dir / START_FILE)
    if job.start_layers is not None:
        groups = job.plan.groups
        metrics["start_layers"] = {f"{side}.{layer}": groups[side][layer][index]  # the teacher layer chosen
                                   for (side, layer), index in sorted(job.start_layers.items())
                                   if len(groups[side][layer]) > 1}
    if needs_generator and dist.is_main:  # the plan as the generator starts (moved by --start importance)
        (run_dir / "plan.txt").write_text(job.plan.format() + "\n", encoding="utf-8")
        write_json(run_dir / "plan.json", job.plan.to_dict())
    model = METHODS[s.method].run(job)
    metrics["phases"] = job.phases
    del job
    model.generation_config = generation_config(model.config)
    if not dist.is_main:  # rank 0 alone writes, scores and exports
        return {}

    # 4. outputs and scores
    with atomic_dir(s.out, force=replace_outputs) as tmp:
        save_marian(model, tokenizer, tmp)
        # the shortlist of the pairs it trained on: `wdctl export` builds it into the translator
        model_shortlist(tokenizer, examples).save(tmp / SHORTLIST_FILE)
    if test_pairs:
        metrics.update(torch_bleu(model, tokenizer, test_pairs, sorted({1, s.eval_beams}), "test", progress=s.progress))
        metrics["test_sentences"] = len(test_pairs)
    if s.export:  # int8's activation ranges from the student's own data, not the exporter's English samples
        calibration = [src for src, _ in (dev_pairs or train_pairs)[:CALIBRATION_SENTENCES]]
        metrics["exports"] = _export(s, outputs, test_pairs, calibration, replace_outputs)
    metrics["total_wall_seconds"] = round(time.perf_counter() - started, 2)
    metrics["outputs"] = {k: str(v) for k, v in outputs.items()}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def _export(s: CompressSettings, outputs: dict[str, Path], test_pairs: list[Pair] | None,
            calibration: list[str], force: bool) -> dict:
    """OUT.onnx/ and OUT.<mode>/, the quantized package's test BLEU scored again, as `wdctl
    translate` runs it (its in-graph translator); int8 calibrated on `calibration`."""
    def score(fp32: Path, quantized: Path) -> dict:
        translate = package_translator(quantized, threads=s.threads or 1, batch_size=64, max_length=MAX_LENGTH,
                                       graph=True)
        return score_bleu(translate, test_pairs, [s.eval_beams], f"{s.quantize}_test")

    built = build_package(s.out, outputs["onnx"], outputs.get(s.quantize), mode=s.quantize or "int8", force=force,
                          score=score if test_pairs and s.quantize else None, calibration=calibration,
                          optimum=None)  # optimum's files only where the mode needs them (fp16)
    info = {"onnx": built["onnx"]}
    if s.quantize:
        info[s.quantize] = built[s.quantize]
        if "quality" in built:
            info[f"{s.quantize}_scores"] = built["quality"]
    return jsonable(info)


def recommended_start(method: str, generator: str) -> tuple[str, bool]:
    """`wdctl compress`'s default (start, refit_output) for a method: the importance slice with its
    top decoder layer refitted, the start that trained fastest on the bundled teacher (SMALL +1.0
    dev BLEU at 250 and 500 steps over importance alone, TINY +12.8 / +7.9; block importance and
    the leading slice behind it: examples/results/start-probe, tiny-start). kd starts from random
    weights and ignores the start ('leading' is what its runs have always recorded)."""
    if method not in STARTS_FROM_TEACHER:
        return "leading", False
    return "importance", generator == "coherent"


def compress_with(teacher_dir: Path | str, data: str | Path | None, out: Path | str | None, **options) -> dict:
    """`compress(CompressSettings(teacher_dir, data, out, **options))`."""
    return compress(CompressSettings(teacher_dir, data, out, **options))
