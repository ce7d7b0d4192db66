"""`wdctl bench` settings: flags parsed and validated before anything heavy runs.

Model directories, the test data, beams, batch sizes, threads, backends, the device (with
`--device cuda`, that the libraries the chosen backends load can reach a GPU) and the output
directory are checked here (`InputError`, exit 2); `canonical_command` is the command line
that reproduces a run (the report records it, and the demo reuses a bench only if it matches).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from wdctl.bench.packages import GRAPH_BACKENDS, ct2_available
from wdctl.core.atomic import check_output_dir
from wdctl.core.errors import InputError
from wdctl.export.session import DEVICES, providers_for
from wdctl.passes.marian import check_model_dir

BACKENDS = ("torch", "ort-optimum", "ort-graph", "ort-graph-int8", "ort-graph-int8-sl", "ct2", "ct2-vmap")
BACKEND_LABELS = {
    "torch": "PyTorch fp32",
    "ort-optimum": "ORT fp32 (optimum generate)",
    "ort-graph": "ORT fp32 (in-graph search)",
    "ort-graph-int8": "ORT int8 (in-graph search)",
    "ort-graph-int8-sl": "ORT int8 (in-graph search, shortlist)",
    "ct2": "CTranslate2 int8",
    "ct2-vmap": "CTranslate2 int8 (vmap shortlist)",
}
PRECISION = {"torch": "fp32", "ort-optimum": "fp32", "ort-graph": "fp32", "ort-graph-int8": "int8",
             "ort-graph-int8-sl": "int8", "ct2": "int8", "ct2-vmap": "int8"}
CPU_ONLY = GRAPH_BACKENDS  # the in-graph translator (`translator.onnx`) runs in the CPU provider only
ORT_BACKENDS = ("ort-optimum", *GRAPH_BACKENDS)
TORCH_BACKENDS = ("torch", "ort-optimum")  # optimum's generate runs torch tensors on the model's device
QUICK = {"max_sentences": 16, "repeats": 1, "beams": (1,), "batch_sizes": (1,)}
DEFAULTS = {"beams": (1, 4), "batch_sizes": (1, 32), "threads": (1,), "repeats": 3, "max_sentences": None}


# --- settings ---------------------------------------------------------------------------------

def parse_int_list(text: str | None, flag: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """'1,4' → (1, 4): positive integers, duplicates dropped, order kept."""
    if text is None:
        return default
    values: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise InputError(f"{flag}: expected comma-separated positive integers, got '{text}'")
        if int(part) not in values:
            values.append(int(part))
    return tuple(values)


def parse_backends(text: str | None, device: str = "cpu") -> tuple[str, ...]:
    """Backends named in `text`; by default all that run on `device`."""
    if text is None:
        return tuple(b for b in BACKENDS if device == "cpu" or b not in CPU_ONLY)
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise InputError(f"--backends: unknown backend(s) {', '.join(unknown) or repr(text)} "
                         f"(choose from {', '.join(BACKENDS)})")
    return tuple(dict.fromkeys(names))


@dataclass
class BenchSettings:
    teacher: Path
    students: list[Path]
    data: str
    out: Path
    split: str = "test"
    beams: tuple[int, ...] = DEFAULTS["beams"]
    batch_sizes: tuple[int, ...] = DEFAULTS["batch_sizes"]
    threads: tuple[int, ...] = DEFAULTS["threads"]
    backends: tuple[str, ...] = BACKENDS
    device: str = "cpu"
    skipped_backends: tuple[str, ...] = ()  # default backends left out because they cannot run on `device`
    max_sentences: int | None = None
    repeats: int = 3
    max_length: int = 256
    length_penalty: float = 1.0
    packages: Path | None = None  # package cache; default OUT/packages
    force: bool = False
    quick: bool = False
    progress: bool = True
    command: str | None = None

    def validate(self) -> "BenchSettings":
        if self.repeats < 1:
            raise InputError(f"--repeats must be at least 1 (got {self.repeats})")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise InputError(f"--max-sentences must be at least 1 (got {self.max_sentences})")
        if self.max_length < 2:
            raise InputError(f"--max-length must be at least 2 (got {self.max_length})")
        if self.device not in DEVICES:
            raise InputError(f"--device: unknown device '{self.device}' (choose from {', '.join(DEVICES)})")
        cpu_only = [b for b in self.backends if b in CPU_ONLY and self.device != "cpu"]
        if cpu_only:
            raise InputError(f"--backends {','.join(cpu_only)}: the in-graph translator runs on CPU only; "
                             f"leave it out with --device {self.device}, or measure it with --device cpu")
        for path in [self.teacher, *self.students]:
            check_model_dir(path)
        check_output_dir(self.out, self.force)
        check_device(self.device, self.backends)  # last: it imports torch and onnxruntime
        return self


def make_settings(teacher, students, data, out, *, split="test", beams=None, batch_sizes=None, threads=None,
                  backends=None, device="cpu", max_sentences=None, repeats=None, max_length=256, length_penalty=1.0,
                  packages=None, force=False, quick=False, progress=True, command=None) -> BenchSettings:
    """Settings from CLI-style values: None means the default, or the `--quick` value."""
    base = {**DEFAULTS, **(QUICK if quick else {})}
    chosen = parse_backends(backends, device)
    settings = BenchSettings(
        teacher=Path(teacher), students=[Path(s) for s in students or []], data=str(data), out=Path(out),
        split=split,
        beams=parse_int_list(beams, "--beams", base["beams"]),
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes", base["batch_sizes"]),
        threads=parse_int_list(threads, "--threads", base["threads"]),
        backends=chosen, device=device,
        skipped_backends=tuple(b for b in BACKENDS if b not in chosen) if backends is None else (),
        max_sentences=max_sentences if max_sentences is not None else base["max_sentences"],
        repeats=repeats if repeats is not None else base["repeats"],
        max_length=max_length, length_penalty=length_penalty,
        packages=Path(packages) if packages else None, force=force, quick=quick, progress=progress,
        command=command,
    ).validate()
    if settings.command is None:
        settings.command = canonical_command(settings)
    return settings


def check_device(device: str, backends: tuple[str, ...]) -> None:
    """With --device cuda, check that each library the backends load can reach a GPU: otherwise
    every worker would fail on its own, after minutes of exporting."""
    if device == "cpu":
        return
    if any(b in ORT_BACKENDS for b in backends):
        try:
            providers_for(device)
        except InputError as exc:
            raise InputError(f"--device {device}: {exc}") from None
    if any(b in TORCH_BACKENDS for b in backends):
        import torch

        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is a CPU-only build: install a CUDA build of torch"
                   if torch.version.cuda is None else "no GPU visible: check the NVIDIA driver and CUDA_VISIBLE_DEVICES")
            raise InputError(f"--device {device}: PyTorch cannot use CUDA ({why})")
    if "ct2" in backends and ct2_available():
        import ctranslate2

        if ctranslate2.get_cuda_device_count() < 1:
            raise InputError(f"--device {device}: CTranslate2 finds no CUDA device (leave ct2 out of --backends)")


def canonical_command(settings: BenchSettings) -> str:
    """The `wdctl bench` command line that reproduces `settings` (explicit values, no defaults)."""
    args = ["wdctl", "bench", "--teacher", str(settings.teacher)]
    for student in settings.students:
        args += ["--student", str(student)]
    args += ["--data", settings.data]
    if settings.split != "test":
        args += ["--split", settings.split]
    if settings.device != "cpu":
        args += ["--device", settings.device]
    args += ["--beams", ",".join(map(str, settings.beams)), "--batch-sizes", ",".join(map(str, settings.batch_sizes)),
             "--threads", ",".join(map(str, settings.threads)), "--backends", ",".join(settings.backends)]
    if settings.max_sentences:
        args += ["--max-sentences", str(settings.max_sentences)]
    args += ["--repeats", str(settings.repeats)]
    if settings.max_length != 256:
        args += ["--max-length", str(settings.max_length)]
    if settings.packages:
        args += ["--packages", str(settings.packages)]
    args += ["--out", str(settings.out)]
    return " ".join(shlex.quote(a) for a in args)
