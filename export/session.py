"""onnxruntime session settings that matter on small shared CPUs, in one place.

Measured on the 2-core development machines: onnxruntime's intra-op threads spin while idle
and fight torch's threads in the same process. With `session.intra_op.allow_spinning=0` and
torch held to one thread, beam-4 decoding of a tiny int8 student at batch 1 went from 18 to
211 target tokens/s. optimum's path (`wdctl.export.optimum_model`: export validation,
re-scoring, the bench's ort-optimum rows) uses these options.
"""

from __future__ import annotations

import sys

from wdctl.core.errors import InputError
from wdctl.core.runinfo import cpu_info

# Rows (sentences x beams) per search up to which onnxruntime's int8 products run faster on
# AVX-512 VNNI than on AMX (`wdctl.core.amx`). `benchmarks/int8_rows.py`, the teacher's shapes:
# at 1-4 rows AMX takes 1.06-1.18x VNNI's time; at 8 rows 0.92-0.99x; at 16, 0.76-0.86x.
AMX_SLOWER_UP_TO_ROWS = 4
GPU_HINT = "onnxruntime-gpu not installed: pip install 'wdctl[gpu]'"
DEVICES = ("cpu", "cuda")


def detect_isa(info: dict | None = None) -> str:
    """The quantization target for this CPU, from `cpu_info()` (reads /proc/cpuinfo)."""
    info = info or cpu_info()
    machine = (info.get("machine") or "").lower()
    flags = set(info.get("isa_flags") or ())
    if machine in ("arm64", "aarch64"):
        return "arm64"
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def settle_int8_kernels(rows: int) -> bool:
    """For a process about to decode searches of `rows` rows (and nothing else): keep its int8
    products off AMX where that is faster. Must run before the process's first onnxruntime
    session. Returns whether AMX was refused (False on CPUs without it, or above the threshold)."""
    from wdctl.core import amx

    return rows <= AMX_SLOWER_UP_TO_ROWS and amx.cpu_has_amx() and amx.deny_amx()


def hold_torch_threads(threads: int = 1) -> None:
    """Keep torch (if this process imported it) from competing with onnxruntime's threads."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(threads)


def session_options(threads: int = 1, *, spinning: bool = False):
    """SessionOptions: `threads` intra-op threads, 1 inter-op thread, no spin-waiting."""
    import onnxruntime as ort

    if threads < 1:
        raise InputError(f"--threads must be at least 1 (got {threads})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    return opts


def providers_for(device: str) -> list[str]:
    """Execution providers for `device`; a clear InputError when CUDA is asked for but missing."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise InputError(f"unknown device '{device}' (choose from {', '.join(DEVICES)})")
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise InputError(GPU_HINT)
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
