"""Device choice and mixed precision, shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib
import os
import re

import torch


def resolve_device(device: str | None = None, local_rank: int | None = None, world_size: int | None = None
                   ) -> torch.device:
    """The device of this process from a ``--device`` value: None = this rank's GPU if there is one,
    else the CPU; ``cuda`` = this rank's GPU (``cuda:LOCAL_RANK``); ``cuda:K`` = GPU K, for one
    process only (several processes would all land on it). Errors name the value."""
    local = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if device is None:
        return torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device}: expected cpu, cuda or cuda:K (K a GPU index)")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or run on a GPU node")
    if device == "cuda":
        device = f"cuda:{local}"
    elif world > 1:
        raise ValueError(f"--device {device}: an explicit GPU index puts every one of the {world} processes on the "
                         "same GPU; use --device cuda (each process takes cuda:LOCAL_RANK)")
    index = int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} visible GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
    return torch.device(device)


def numerics(device: torch.device, processes: int = 1) -> dict[str, object]:
    """What changes a job's numbers besides its settings and inputs, recorded in its identity (the
    training state's, a sample set's card): CPU reductions depend on the thread count, GPU ones do
    not (the CPU side only feeds the GPU); the process count and torch's version change them anywhere."""
    cpu = device.type == "cpu"
    return {"device": device.type, "threads": torch.get_num_threads() if cpu else None, "processes": processes,
            "torch": torch.__version__.split("+")[0]}


def default_device() -> torch.device:
    return resolve_device(None)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 / fp16 autocast on GPU; CPU runs fp32 (CPU autocast is slower than fp32 here)."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
