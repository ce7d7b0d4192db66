"""PyTorch's own distributed engine, as the passes use it: `torchrun` + DDP, rank 0 writes.

Every training pass (teacher, WD phase 1 and 2) and the distillation run unchanged in one
process or under `torchrun --nproc_per_node N`: `distributed()` joins the process group the
launcher describes in the environment (gloo on CPU, NCCL on GPU) and says which rank this is.
Work is split by rank; files, logs and progress bars belong to rank 0; `barrier()` orders the
two. Outside `torchrun` it is rank 0 of a world of 1 and every call is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from wdctl.core.errors import InputError

@dataclass(frozen=True)
class Distributed:
    """Rank, world size and device of this process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """`cuda` means this rank's own GPU (LOCAL_RANK) when several processes share a node."""
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of `values` over all ranks (the same list on every rank)."""
        if self.world == 1:
            return values
        on = torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        t = torch.tensor(values, dtype=torch.float64, device=on)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def check_accum(accum: int, world: int, where: str = "training") -> None:
    """The global batch is `accum` micro-batches whatever the world size, dealt out evenly."""
    if accum % world:
        raise InputError(f"{where}: --accum {accum} must be a multiple of the number of processes ({world}), "
                         "so that the global batch stays the same")


def launched_world() -> int:
    """The number of processes `torchrun` started (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed(device: str = "cpu") -> Distributed:
    """Join the process group that `torchrun` describes in the environment, if any.

    The first call picks the backend (NCCL when `device` is a GPU, else gloo); later calls
    return the group already joined."""
    if launched_world() <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank,
                       torch.distributed.get_backend())
