"""Device choice and numerics, shared by training, sampling and evaluation: which device a process
uses (``resolve_device``, with local GPU slots for 1-GPU jobs side by side), the precision of a run
(``Precision``: autocast and fp16 loss scaling), metric numerics (``metric_numerics``: TF32 off) and
the opt-in deterministic GPU mode (``PVDM_DETERMINISTIC=1``)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("pvdm")

AMP_CHOICES = ("none", "bf16", "fp16")
_held_slots: list[int] = []  # file descriptors of the GPU slot locks this process holds (released at exit)
_claimed: list[int] = []  # the visible index of the GPU slot this process took (at most one)


def resolve_device(device: str | None = None, local_rank: int | None = None, world_size: int | None = None
                   ) -> torch.device:
    """The device of this process from a ``--device`` value: None = ``cuda`` if there is a GPU, else
    the CPU; ``cuda`` = this rank's GPU (``cuda:LOCAL_RANK``) in a multi-process job, a free GPU
    (``local_gpu_slot``) for a single process; ``cuda:K`` = GPU K, for one process only (several
    processes would all land on it). Errors name the value."""
    local = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    world = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
    if device is None and not torch.cuda.is_available():
        return torch.device("cpu")
    device = "cuda" if device is None else device
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device {device}: expected cpu, cuda or cuda:K (K a GPU index)")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or run on a GPU node")
    if device == "cuda":
        slot = local_gpu_slot() if world == 1 and not launched_by_torchrun() else None
        device = f"cuda:{local if slot is None else slot}"
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
    not (the CPU side only feeds the GPU); the process count and torch's version change them anywhere;
    on a GPU the deterministic mode changes which kernels run."""
    cpu = device.type == "cpu"
    out: dict[str, object] = {"device": device.type, "threads": torch.get_num_threads() if cpu else None,
                              "processes": processes, "torch": torch.__version__.split("+")[0]}
    if not cpu:  # CPU identities stay those of earlier runs (CPU results are exact either way)
        out["deterministic"] = deterministic_requested()
    return out


def default_device() -> torch.device:
    return resolve_device(None)


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``Precision(device, amp)``."""
    return Precision(device, amp).autocast()


class LossScaler(torch.amp.GradScaler):
    """torch's GradScaler whose state loads across devices and precisions: a disabled scaler (CPU,
    bf16, fp32) saves ``{}``; resuming that state with fp16 on a GPU starts from a fresh scale
    instead of raising in ``GradScaler.load_state_dict({})``. An enabled scaler's state loaded into a
    disabled one is ignored (no loss scaling there)."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.is_enabled() and not state_dict:
            log.info("the saved state has no loss-scaler state (saved without fp16 scaling): starting at scale %g",
                     self.get_scale())
            return
        super().load_state_dict(state_dict)


class Precision:
    """The arithmetic of a run on ``device`` with ``amp`` (none / bf16 / fp16): bf16 and fp16
    autocast on a GPU; fp16 also needs loss scaling (its gradients underflow otherwise), bf16 and
    fp32 do not. The CPU always runs fp32 (CPU autocast is slower than fp32 here, and CPU results
    stay those of earlier runs). One object per run, used by every trainer and by sampling."""

    def __init__(self, device: torch.device, amp: str):
        if amp not in AMP_CHOICES:
            raise ValueError(f"amp: {amp!r}; choose one of {', '.join(AMP_CHOICES)}")
        self.device, self.amp = torch.device(device), amp
        on_gpu = self.device.type == "cuda"
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if on_gpu else None
        self.scales_loss = on_gpu and amp == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def scaler(self) -> LossScaler:
        """A new loss scaler (a pass-through unless fp16 on a GPU); register it with the run's state."""
        return LossScaler("cuda", enabled=self.scales_loss and torch.cuda.is_available())

    def __repr__(self) -> str:
        return f"Precision({self.device}, {self.amp}: {self.dtype or torch.float32}, loss scaling {self.scales_loss})"


@contextlib.contextmanager
def metric_numerics() -> Iterator[None]:
    """Metrics (I3D/FVD, C3D/IS, LPIPS, reconstruction scores) at float32 precision on a GPU too: TF32
    matmuls and convolutions off inside, the previous settings restored after (TF32 moves I3D logits
    by up to 2e-2). No effect on the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- deterministic GPU mode ----------------------------------------------------------------------

def deterministic_requested() -> bool:
    """``PVDM_DETERMINISTIC=1`` asks for deterministic GPU kernels (0 or unset: torch's defaults)."""
    value = os.environ.get("PVDM_DETERMINISTIC", "0")
    if value not in ("0", "1"):
        raise ValueError(f"PVDM_DETERMINISTIC={value!r}: expected 0 or 1")
    return value == "1"


def apply_deterministic_mode() -> bool:
    """With ``PVDM_DETERMINISTIC=1``: deterministic algorithms (an op without one raises), cuDNN
    deterministic without autotuning, and the cuBLAS workspace setting its reproducibility needs
    (set before the first cuBLAS call of the process). Then a resumed GPU run repeats an
    uninterrupted one; without it only CPU runs do. Its cost on a GPU is not measured yet."""
    if not deterministic_requested():
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return True


# --- local GPU slots -----------------------------------------------------------------------------

def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def slot_dir() -> Path:
    """Where the slot locks live: one machine-wide folder (PVDM_GPU_SLOT_DIR overrides)."""
    return Path(os.environ.get("PVDM_GPU_SLOT_DIR", f"/tmp/pvdm-gpu-slots-{os.getuid()}"))


def claim_slot(names: list[str], folder: Path) -> int | None:
    """Index of the first device in ``names`` whose lock file ``folder/<name>.lock`` this process
    could take (an exclusive fcntl lock, held until the process exits, killed or not); None when
    every one is taken. ``names`` identify the devices machine-wide (GPU UUIDs), so jobs with
    different CUDA_VISIBLE_DEVICES still agree on which GPU is which."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        fd = os.open(folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held_slots.append(fd)
        return index
    return None


def local_gpu_slot() -> int | None:
    """For a 1-process job on a machine with several visible GPUs: a free one (its index), so 1-GPU
    jobs side by side (sampling shards, FVD) spread over the GPUs instead of all using cuda:0.
    PVDM_GPU_SLOTS=0 turns this off. None: one GPU, turned off, or every GPU taken (then cuda:0 is
    shared, with a warning)."""
    count = torch.cuda.device_count()
    if count < 2 or os.environ.get("PVDM_GPU_SLOTS", "1") == "0":
        return None
    if _claimed:  # this process holds one already (resolve_device called again)
        return _claimed[0]
    names = [gpu_uuid(i) for i in range(count)]
    folder = slot_dir()
    index = claim_slot(names, folder)
    if index is None:
        log.warning("all %d visible GPUs are taken by other pvdm jobs (locks in %s): sharing cuda:0", count, folder)
    else:
        _claimed.append(index)
        log.info("using cuda:%d (slot lock %s/%s.lock; PVDM_GPU_SLOTS=0 turns slots off)", index, folder,
                 names[index])
    return index


def gpu_uuid(index: int) -> str:
    """A machine-wide name of visible GPU ``index``: its UUID (the visible index if torch has none)."""
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"gpu-{uuid}" if uuid is not None else f"visible-{index}"
