"""Process-group helpers. One code path for 1 process and for torchrun (DDP).

Under ``torchrun`` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; without it this is a
single process. NCCL on GPUs, gloo on CPU. Every decision that ends training (a non-finite loss,
the divergence guard, early stopping) is taken on values reduced over the ranks, so all ranks stop
at the same step and none waits for a peer that has left.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn

from pvdm.utils.device import apply_deterministic_mode, resolve_device

log = logging.getLogger("pvdm.train")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def die_with_launcher() -> None:
    """Under pvdm's launcher or torchrun, end this worker when the launcher ends (Linux
    PR_SET_PDEATHSIG): both start their workers in sessions of their own, so a SIGKILL of the
    launcher would leave them training on as orphans, writing into the folder a rerun resumes from."""
    launched = "TORCHELASTIC_RUN_ID" in os.environ or "PVDM_LAUNCHER_PID" in os.environ
    if not launched or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("could not tie this worker's life to torchrun's (prctl errno %d)", ctypes.get_errno())
    if os.getppid() != launcher:  # torchrun already gone between the two calls
        os._exit(1)


def collective_timeout() -> timedelta:
    """How long a rank waits in a collective: the other ranks wait in a barrier while rank 0 writes
    state.pt (~8.5 GB at paper scale, minutes on a slow shared file system), longer than NCCL's
    10-minute default allows. PVDM_COLLECTIVE_TIMEOUT_MIN sets it (default 60)."""
    text = os.environ.get("PVDM_COLLECTIVE_TIMEOUT_MIN", "60")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"PVDM_COLLECTIVE_TIMEOUT_MIN={text!r}: expected a whole number of minutes >= 1")
    return timedelta(minutes=int(text))


def setup(device: str | None = None) -> Dist:
    """Initialise the process group when launched by torchrun; pick this process's device."""
    die_with_launcher()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    deterministic = apply_deterministic_mode()  # before the first CUDA call (cuBLAS reads its setting then)
    dev = resolve_device(device, local, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=collective_timeout())
    d = Dist(rank, world, dev)
    if d.is_main:
        log.info(
            "processes: %d (%s), device %s, CUDA_VISIBLE_DEVICES=%s, threads per process %d, deterministic %s",
            world, dist.get_backend() if d.enabled else "single process", dev,
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), torch.get_num_threads(),
            "on (PVDM_DETERMINISTIC=1)" if deterministic else "off",
        )
    return d


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def mean_across_ranks(values: dict[str, float], d: Dist) -> dict[str, float]:
    """The mean of each value over all ranks (one all-reduce); every rank must call it. A NaN on
    any rank makes the mean NaN on every rank."""
    if not d.enabled or not values:
        return values
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: v / d.world_size for k, v in zip(values, t.tolist(), strict=True)}


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when ``flag`` is true on any rank (a collective: every rank calls it)."""
    if not d.enabled:
        return flag
    t = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(params: list[nn.Parameter], d: Dist) -> None:
    """Mean of each gradient over the ranks, for modules not wrapped in DDP (the discriminators,
    which run twice per step: DDP allows one forward per backward)."""
    if not d.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world_size)


def sync_batchnorm(module: nn.Module, d: Dist) -> nn.Module:
    """Batch statistics over the global batch of every rank: torch's SyncBatchNorm where it runs
    (CUDA), CrossRankBatchNorm under gloo on CPU. A single process keeps its BatchNorm."""
    if not d.enabled:
        return module
    if d.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        bn = CrossRankBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn.to(next(module.buffers()).device)
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module


class CrossRankBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the global batch of every rank, for process
    groups where torch's SyncBatchNorm does not run (gloo on CPU). Same parameters and buffers as
    the BatchNorm it replaces; one differentiable all-reduce of (sum, sum of squares, count)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim < 2:
            raise ValueError(f"expected at least 2-D input, got {x.ndim}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.ndim)]
        count = x.new_full((1,), x.numel() / c)
        stats = dist_nn.all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # gradients flow back
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp(min=0)  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * n / (n - 1), m)
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
