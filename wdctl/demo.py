"""`wdctl demo`: the whole story on the bundled corpus, sized for a 2-core CPU (~20 minutes).

Stages, each reused on a rerun when its finished output is there (an interrupted training
stage resumes from its checkpoints):

1. data     `OUT/data/` (teacher: the full bundled training split; dev and test cut to a few
            hundred sentences so evaluation stays short) and `OUT/data-student/` (the first
            few thousand training pairs, which the teacher translates for distillation).
2. teacher  `OUT/teacher/`: the CPU-friendly preset (3+3 layers, d 256, 8k vocabulary) trained
            for a few minutes, a much shorter schedule than the full recipe's 55 minutes, so
            its BLEU is far below what `wdctl teacher train` reaches.
3. student  `OUT/wd-tiny/`: `wdctl compress --student tiny --method wd` with short phase
            budgets (minutes, not the default 2000 + 2000 steps) and greedy distillation.
4. export   `OUT/packages/`: ONNX fp32, int8 and (if installed) CTranslate2 packages of both.
5. bench    `OUT/bench/`: `wdctl bench` over the first 100 test sentences, beams 1 and 4,
            batch sizes 1 and 32, one timed pass each; its report.md and plot are copied to
            `OUT/report.md` and `OUT/bleu_vs_speed.png`.

`OUT/demo.json` records each stage's wall time and whether it was reused.

Timed on an idle 2-core machine from a fresh clone (2026-11-25): data 0.1 s, teacher 7.2 min
(453 steps in its 6 minutes, then evaluation), student 5.6 min (distillation 69 s, 2 + 2 min of
training, evaluation), export 9 s, bench 4.7 min (32 measurements, one process each, one pass
over 100 sentences): 17.7 min. `--threads` is the benchmark's; training uses all cores unless
`--train-threads` says otherwise.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from wdctl.core.atomic import MARKER, atomic_dir, atomic_write_text
from wdctl.core.errors import InputError

BUNDLED = Path(__file__).resolve().parents[1] / "examples" / "data" / "bible"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and budgets of one demo run."""

    teacher_preset: str = "cpu"
    teacher_minutes: float = 6.0  # the full recipe ("cpu" preset) trains for 55 minutes
    teacher_steps: int | None = None  # None: the preset's schedule (bounded by the minutes)
    # The "cpu" schedule warms up over 800 steps, more than 6 minutes reach (~450 steps): the
    # demo reaches the peak learning rate sooner. None: the preset's warm-up.
    teacher_warmup: int | None = 400
    vocab_size: int | None = None  # None: the preset's
    held_out: int = 200  # dev and test sentences (teacher eval, student eval, bench)
    train_pairs: int | None = None  # teacher training pairs; None = the whole training split
    student_pairs: int = 4000  # training pairs the teacher translates for the student
    student: str = "tiny"
    phase_minutes: tuple[float, float] = (2.0, 2.0)
    phase_steps: tuple[int, int] = (2000, 2000)
    distill_beams: int = 1
    eval_sentences: int = 100
    beams: str = "1,4"
    batch_sizes: str = "1,32"
    bench_sentences: int = 100
    repeats: int = 1
    # optimum's generate() is left out of the demo to fit its time budget (`wdctl bench` runs it)
    backends: str | None = "torch,ort,ort-int8,ct2"

    def estimate(self) -> str:
        return (f"teacher {self.teacher_minutes:g} min, student {sum(self.phase_minutes):g} min of training "
                f"+ distillation, bench {self.bench_sentences} sentences")


DEMO = DemoPlan()
# A seconds-long run of every stage, for tests (`wdctl demo --smoke`).
SMOKE = DemoPlan(teacher_preset="tiny", teacher_minutes=0.0, teacher_steps=40, teacher_warmup=None,
                 vocab_size=400, held_out=8, train_pairs=600, student_pairs=200, phase_minutes=(0.0, 0.0),
                 phase_steps=(10, 10), eval_sentences=0, beams="1", batch_sizes="1", bench_sentences=4, repeats=1,
                 backends="ort-int8,ct2")


def _finished(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def _write_tsv(path: Path, pairs) -> None:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")


def stage_data(out: Path, plan: DemoPlan, source: Path = BUNDLED) -> tuple[Path, Path]:
    from wdctl.core.corpus import read_parallel

    teacher_data, student_data = out / "data", out / "data-student"
    if _finished(teacher_data) and _finished(student_data):
        return teacher_data, student_data
    splits = {split: read_parallel(source, split) for split in ("train", "dev", "test")}
    train = splits["train"][: plan.train_pairs] if plan.train_pairs else splits["train"]
    dev, test = splits["dev"][: plan.held_out], splits["test"][: plan.held_out]
    for path, train_pairs in ((teacher_data, train), (student_data, splits["train"][: plan.student_pairs])):
        if _finished(path):
            continue
        with atomic_dir(path, force=False) as tmp:
            _write_tsv(tmp / "train.en-es.tsv", train_pairs)
            _write_tsv(tmp / "dev.en-es.tsv", dev)
            _write_tsv(tmp / "test.en-es.tsv", test)
    return teacher_data, student_data


def stage_teacher(out: Path, data: Path, plan: DemoPlan, threads: int = 0) -> Path:
    from wdctl.config import TEACHER_SCHEDULES, train_config
    from wdctl.teacher import train_teacher

    teacher = out / "teacher"
    if _finished(teacher):
        return teacher
    overrides = {"max_minutes": plan.teacher_minutes, "max_steps": plan.teacher_steps,
                 "warmup": plan.teacher_warmup, "threads": threads}
    cfg = train_config(TEACHER_SCHEDULES[plan.teacher_preset], overrides, "demo teacher schedule")
    train_teacher(str(data), teacher, plan.teacher_preset, cfg, vocab_size=plan.vocab_size,
                  eval_sentences=plan.held_out, final_beams=4)
    return teacher


def stage_student(out: Path, teacher: Path, data: Path, plan: DemoPlan, threads: int = 0) -> Path:
    from wdctl.pipeline import compress, phase_configs

    student = out / f"wd-{plan.student}"
    if _finished(student):
        return student
    phases = {name: {"max_steps": steps, "max_minutes": minutes}
              for name, steps, minutes in zip(("phase1", "phase2"), plan.phase_steps, plan.phase_minutes)}
    p1, p2 = phase_configs(phases)
    compress(teacher, str(data), student, student=plan.student, method="wd", phase1=p1, phase2=p2,
             export=False, cache_dir=out / "distilled", distill_beams=plan.distill_beams,
             eval_sentences=plan.eval_sentences, threads=threads)
    return student


def bench_settings(out: Path, teacher: Path, student: Path, plan: DemoPlan, threads: int):
    from wdctl.export.bench import make_settings

    return make_settings(teacher, [student], str(out / "data"), out / "bench", beams=plan.beams,
                         batch_sizes=plan.batch_sizes, threads=str(threads), backends=plan.backends,
                         max_sentences=plan.bench_sentences, repeats=plan.repeats, packages=out / "packages",
                         force=(out / "bench").exists())


def stage_packages(settings) -> list[str]:
    from wdctl.export.packages import make_systems, prepare_packages

    systems = make_systems(settings.teacher, settings.students)
    return prepare_packages(systems, settings.backends, Path(settings.packages))


def bench_finished(out: Path, settings) -> bool:
    """A finished bench of the same command (same systems, settings and output)."""
    report = out / "bench" / "report.json"
    return report.is_file() and _finished(out / "bench") and _same_bench(report, settings)


def stage_bench(out: Path, settings) -> Path:
    from wdctl.export.bench import run_bench

    if not bench_finished(out, settings):
        run_bench(settings)
    for name in ("report.md", "bleu_vs_speed.png"):
        if name.endswith(".md"):
            atomic_write_text(out / name, (out / "bench" / name).read_text(encoding="utf-8"))
        else:
            shutil.copyfile(out / "bench" / name, out / name)
    return out / "report.md"


def _same_bench(report: Path, settings) -> bool:
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("command") == settings.command
    except (OSError, json.JSONDecodeError):
        return False


def run_demo(out: Path | str = Path("runs/demo"), threads: int = 1, train_threads: int = 0, plan: DemoPlan = DEMO,
             log=print) -> Path:
    """Run (or finish) every stage; returns the path of the report.

    `threads`: threads of each benchmark measurement; `train_threads`: torch threads for
    training and distillation (0 = torch's choice, all cores)."""
    out = Path(out)
    if threads < 1:
        raise InputError(f"--threads must be at least 1 (got {threads})")
    if train_threads < 0:
        raise InputError(f"--train-threads must be 0 (all cores) or more (got {train_threads})")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if not BUNDLED.is_dir():
        raise InputError(f"{BUNDLED}: the bundled corpus is missing (rebuild it with `wdctl data bible`)")
    out.mkdir(parents=True, exist_ok=True)
    times = _previous_stages(out)

    def stage(name: str, finished: bool, fn):
        log(f"demo: {name}: {'reusing the finished output' if finished else 'running'}")
        start = time.perf_counter()
        result = fn()
        if finished and name in times:  # keep the time of the run that made it
            times[name] = {**times[name], "reused": True}
        else:
            times[name] = {"seconds": round(time.perf_counter() - start, 1), "reused": finished}
        _record(out, plan, threads, times)
        return result

    log(f"demo: writing to {out} ({plan.estimate()}); rerun the same command to resume")
    teacher_data, student_data = stage("data", _finished(out / "data") and _finished(out / "data-student"),
                                       lambda: stage_data(out, plan))
    teacher = stage("teacher", _finished(out / "teacher"),
                    lambda: stage_teacher(out, teacher_data, plan, train_threads))
    student = stage(f"student (wd-{plan.student})", _finished(out / f"wd-{plan.student}"),
                    lambda: stage_student(out, teacher, student_data, plan, train_threads))
    settings = bench_settings(out, teacher, student, plan, threads)
    stage("export", False, lambda: stage_packages(settings))
    report = stage("bench", bench_finished(out, settings), lambda: stage_bench(out, settings))
    log(f"demo: report written to {report}")
    return report


def _previous_stages(out: Path) -> dict:
    try:
        return dict(json.loads((out / "demo.json").read_text(encoding="utf-8")).get("stages", {}))
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}


def _record(out: Path, plan: DemoPlan, threads: int, times: dict) -> None:
    data = {"plan": asdict(plan), "bench_threads": threads, "stages": times}
    atomic_write_text(out / "demo.json", json.dumps(data, indent=2) + "\n")


