"""`--nproc N`: run this same command under `torchrun` with N processes on this machine.

The launcher process does no work of its own: it starts `python -m torch.distributed.run
--standalone --nproc_per_node N -m wdctl ARGS...` (PyTorch's launcher; gloo on CPU, NCCL on GPU)
and exits with its status. Each worker parses the same ARGS, sees WORLD_SIZE = N and runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from wdctl.core.errors import InputError, WdctlError
from wdctl.passes.distributed import check_accum, launched_world


class WorkersFailed(WdctlError):
    """torchrun's workers failed; their own messages are above this one. Exits with torchrun's status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class WorkersInterrupted(WdctlError):
    exit_code = 130


def handed_to_torchrun(nproc: int | None, argv: list[str], accums: tuple[int, ...] = ()) -> bool:
    """Start `argv` under torchrun when `nproc` > 1 and this is not a worker already.

    Returns True when the workers ran (and succeeded), False when this process should do the
    work itself: nproc is 1/unset, or this process is one of torchrun's workers."""
    if nproc is None:
        return False
    if nproc < 1:
        raise InputError(f"--nproc must be at least 1 (got {nproc})")
    world = launched_world()
    if world > 1 or nproc == 1:
        if world not in (1, nproc):
            raise InputError(f"--nproc {nproc} but torchrun started {world} processes; drop --nproc under torchrun")
        return False
    for accum in accums:  # fail here, once, rather than in every worker
        check_accum(accum, nproc)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "wdctl", *without_nproc(argv)]
    interrupted = []  # Ctrl-C reaches the workers too: they checkpoint and stop, and so does torchrun
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    try:
        code = subprocess.call(command)
    finally:
        signal.signal(signal.SIGINT, previous)
    if code and interrupted:
        raise WorkersInterrupted("interrupted; the workers saved a checkpoint where they could. "
                                 "Run the same command again to resume.")
    if code:
        raise WorkersFailed(f"{nproc} worker processes under torchrun failed (exit status {code}); "
                            "see their messages above", code)
    return True


def without_nproc(argv: list[str]) -> list[str]:
    """`argv` less `--nproc N`: the workers need no launcher, and torchrun's own parser would
    take `--nproc` for an abbreviation of its `--nproc-per-node`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
