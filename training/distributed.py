"""This process's place in a torchrun job, and the collectives every rank must agree through."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def ddp(self) -> bool:
        return self.world_size > 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun process group (NCCL on CUDA, gloo on CPU) if RANK is set."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return Dist()
    import torch.distributed as tdist

    d = Dist(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend)
    return d


def any_rank(dist: Dist, device: str, *flags: bool) -> list[bool]:
    """OR each flag across ranks so every process takes the same branch (no hang)."""
    if not dist.ddp:
        return list(flags)
    import torch.distributed as tdist

    t = torch.tensor([float(f) for f in flags], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def teardown(dist: Dist) -> None:
    """Leave the process group; a barrier first, so no rank tears gloo down under a slower one's last save."""
    if not dist.ddp:
        return
    with contextlib.suppress(RuntimeError):
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
