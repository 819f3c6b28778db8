"""pvdm.utils.device on CPU: the precision of a run per (device, amp), loss-scaler state across devices
(a CPU state.pt resumed with fp16 on a GPU), metric numerics, the deterministic mode and local GPU
slots (several processes, fake device counts, a killed holder frees its slot)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from pvdm.train.state import read_state, save_state
from pvdm.utils import device as device_utils
from pvdm.utils.device import LossScaler, Precision, claim_slot, metric_numerics, numerics, resolve_device

CPU, GPU = torch.device("cpu"), torch.device("cuda:0")


@pytest.mark.parametrize(("device", "amp", "dtype", "scales"), [
    (CPU, "none", None, False), (CPU, "bf16", None, False), (CPU, "fp16", None, False),
    (GPU, "none", None, False), (GPU, "bf16", torch.bfloat16, False), (GPU, "fp16", torch.float16, True),
])
def test_precision_choices(device, amp, dtype, scales):
    p = Precision(device, amp)
    assert (p.dtype, p.scales_loss) == (dtype, scales)
    if dtype is None:  # fp32: no autocast at all
        with p.autocast():
            assert not torch.is_autocast_enabled("cuda") and not torch.is_autocast_enabled("cpu")
    # The scaler scales only for fp16 on a GPU (torch disables it where CUDA is absent).
    assert p.scaler().is_enabled() == (scales and torch.cuda.is_available())


def test_precision_rejects_unknown_amp():
    with pytest.raises(ValueError, match="amp: 'fp32'; choose one of none, bf16, fp16"):
        Precision(CPU, "fp32")


def scaled_once(scaler: torch.amp.GradScaler) -> torch.amp.GradScaler:
    """One optimiser step through ``scaler`` on the CPU with an inf gradient: the scale backs off."""
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler.scale((w * float("inf")).sum()).backward()
    scaler.step(opt)
    scaler.update()
    return scaler


def test_scaler_state_round_trips_through_state_pt(tmp_path):
    # Enabled (fp16 on a GPU; the CPU's GradScaler stands in for it here) -> enabled: the scale survives.
    enabled = scaled_once(LossScaler("cpu", init_scale=1024.0))
    assert enabled.get_scale() == 512.0
    save_state(tmp_path / "state.pt", 1, {"k": 1}, scaler=enabled)
    resumed = LossScaler("cpu", init_scale=1024.0)
    resumed.load_state_dict(read_state(tmp_path / "state.pt")["scaler"])
    assert resumed.get_scale() == 512.0 and resumed.state_dict() == enabled.state_dict()
    # Enabled -> disabled (resumed in bf16 / fp32 / on the CPU): ignored, nothing scaled.
    off = LossScaler("cpu", enabled=False)
    off.load_state_dict(read_state(tmp_path / "state.pt")["scaler"])
    assert off.state_dict() == {} and not off.is_enabled()


def test_empty_scaler_state_resumes_with_fp16(tmp_path):
    # A state saved without loss scaling (a CPU or bf16 run) holds {} for the scaler.
    save_state(tmp_path / "state.pt", 3, {"k": 1}, scaler=Precision(CPU, "fp16").scaler())
    saved = read_state(tmp_path / "state.pt")["scaler"]
    assert saved == {}
    with pytest.raises(RuntimeError, match="source state dict is empty"):  # what torch's own scaler does
        torch.amp.GradScaler("cpu").load_state_dict(saved)
    fresh = LossScaler("cpu", init_scale=2.0**16)
    fresh.load_state_dict(saved)  # starts from a fresh scale
    assert fresh.is_enabled() and fresh.get_scale() == 2.0**16
    assert scaled_once(fresh).get_scale() == 2.0**15  # and works


def test_metric_numerics_turns_tf32_off_and_restores():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with metric_numerics():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_deterministic_mode_is_opt_in_and_in_the_gpu_identity(monkeypatch):
    monkeypatch.delenv("PVDM_DETERMINISTIC", raising=False)
    assert device_utils.apply_deterministic_mode() is False and not torch.are_deterministic_algorithms_enabled()
    assert "deterministic" not in numerics(CPU)  # CPU identities are those of earlier runs
    assert numerics(GPU)["deterministic"] is False
    monkeypatch.setenv("PVDM_DETERMINISTIC", "yes")
    with pytest.raises(ValueError, match="PVDM_DETERMINISTIC='yes': expected 0 or 1"):
        device_utils.apply_deterministic_mode()
    monkeypatch.setenv("PVDM_DETERMINISTIC", "1")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    try:
        assert device_utils.apply_deterministic_mode() is True
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert numerics(GPU)["deterministic"] is True
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _holder(folder: Path, names: list[str], out: multiprocessing.Queue) -> None:
    out.put(claim_slot(names, folder))
    time.sleep(120)


def hold(folder: Path, names: str) -> tuple[multiprocessing.Process, str]:
    """A process (forked: no second torch import) that takes a slot among ``names`` and keeps it."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_holder, args=(folder, names.split(","), out), daemon=True)
    proc.start()
    return proc, str(out.get(timeout=60))


def test_gpu_slots_are_distinct_and_freed_by_a_killed_holder(tmp_path):
    names = "gpu-a,gpu-b,gpu-c"
    procs = []
    try:
        got = []
        for _ in range(3):
            proc, index = hold(tmp_path, names)
            procs.append(proc)
            got.append(index)
        assert sorted(got) == ["0", "1", "2"]  # three jobs side by side: three GPUs
        proc, index = hold(tmp_path, names)
        procs.append(proc)
        assert index == "None"  # all taken
        victim = procs[got.index("1")]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        proc, index = hold(tmp_path, names)
        procs.append(proc)
        assert index == "1"  # the killed job's GPU is free again
    finally:
        for p in procs:
            p.kill()
            p.join()


def fake_gpus(monkeypatch, tmp_path, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(device_utils, "gpu_uuid", lambda i: f"gpu-{'abcdefgh'[i]}")
    monkeypatch.setattr(device_utils, "_claimed", [])
    monkeypatch.setattr(device_utils, "_held_slots", [])
    monkeypatch.setenv("PVDM_GPU_SLOT_DIR", str(tmp_path))
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "PVDM_GPU_SLOTS"):
        monkeypatch.delenv(key, raising=False)


def test_resolve_device_takes_a_free_gpu_slot(monkeypatch, tmp_path, caplog):
    fake_gpus(monkeypatch, tmp_path, 4)
    proc, index = hold(tmp_path, "gpu-a")  # another job holds cuda:0
    try:
        assert index == "0"
        with caplog.at_level("INFO", logger="pvdm"):
            assert resolve_device("cuda") == torch.device("cuda:1")
        assert "using cuda:1 (slot lock" in caplog.text
        assert resolve_device(None) == torch.device("cuda:1")  # the same slot on a second call
        # Explicit indices, torchrun and PVDM_GPU_SLOTS=0 do not use slots.
        assert resolve_device("cuda:2") == torch.device("cuda:2")
        monkeypatch.setattr(device_utils, "_claimed", [])
        monkeypatch.setenv("PVDM_GPU_SLOTS", "0")
        assert resolve_device("cuda") == torch.device("cuda:0")
        monkeypatch.delenv("PVDM_GPU_SLOTS")
        monkeypatch.setenv("LOCAL_RANK", "3")
        assert resolve_device("cuda", world_size=4) == torch.device("cuda:3")
        with pytest.raises(ValueError, match="--device cuda:1: an explicit GPU index puts every one of the 4"):
            resolve_device("cuda:1", world_size=4)
    finally:
        proc.kill()
        proc.join()
    assert claim_slot(["gpu-a"], tmp_path) == 0  # released with its holder
    for fd in device_utils._held_slots:  # this process's locks (the test's own list)
        os.close(fd)


def test_no_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == CPU
    for value in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"--device {value}: CUDA is not available on this machine"):
            resolve_device(value)
    with pytest.raises(ValueError, match="--device gpu: expected cpu, cuda or cuda:K"):
        resolve_device("gpu")
