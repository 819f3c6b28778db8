"""Process-group helpers. One code path for 1 process and for torchrun (DDP).

Under ``torchrun`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; without it this is a
single process. Nothing else in the training code needs to know which.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None) -> Dist:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank, world, local, dev)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_across_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """The mean of each value over all ranks (one all-reduce); every rank must call it."""
    if not d.enabled or not values:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: v / d.world_size for k, v in zip(values, t.tolist(), strict=True)}


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
