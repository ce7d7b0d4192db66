"""What a run directory or report records about the software and machine that produced it."""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import resource
import sys
import threading
from importlib import metadata
from pathlib import Path

from wdctl.core.atomic import atomic_write_text

PACKAGES = ("wdctl", "torch", "transformers", "tokenizers", "sentencepiece", "optimum", "optimum-onnx",
            "onnx", "onnxruntime", "onnxruntime-gpu", "ctranslate2", "sacrebleu", "safetensors")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@functools.cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (Linux; elsewhere no flags),
    read once per process (every TrainConfig.validate asks for the flags)."""
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, tuple(flags)


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16 or AVX-512 BF16). Where
    it does, bf16 autocast trains faster than fp32; elsewhere bf16 is emulated and slower."""
    flags = set(_cpuinfo()[1])
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def cpu_info() -> dict:
    model, flags = _cpuinfo()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "fma", "sse4_2")
    return {"model": model, "cores": os.cpu_count(), "isa_flags": [f for f in wanted if f in flags],
            "machine": platform.machine(), "python": platform.python_version()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    Linux: VmHWM, the high-water mark of this process's own memory. getrusage's ru_maxrss is
    not used there because it carries a parent's peak into a child started by fork + exec, so
    a benchmark worker would report its launcher's memory. Elsewhere ru_maxrss (bytes on macOS)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def rss_bytes() -> int:
    """Resident memory of this process now."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def release_free_memory() -> None:
    """Hand the memory that the allocator keeps but nothing uses back to the OS (glibc's
    malloc_trim; elsewhere only a garbage collection). Between training phases this returns
    gigabytes: without it, phase 2 of an opus-mt-sized run starts at phase 1's high-water mark."""
    import ctypes
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


def available_bytes() -> int:
    """Memory available to a new allocation now (psutil's `available`)."""
    import psutil

    return int(psutil.virtual_memory().available)


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


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
