"""The CUDA tier (`pytest -m cuda tests/test_cuda.py`): what a first GPU run must show, in under 5 minutes
on one H100/H200. Skipped with the reason where no GPU is present. ``PVDM_CUDA_TIER_DEVICE=cpu`` runs the
same bodies on the CPU (every GPU-only comparison then compares the CPU with itself), which proves the
code paths the tier calls exist and run; `bash scripts/gpu_check.sh` runs it on a GPU and keeps what each
test measured (``PVDM_GPU_RESULTS``: one JSON per test).

Tolerances (fp32 with TF32 off, pvdm.utils.device.metric_numerics, unless stated):
  first training loss, device vs CPU (same weights, same batch): relative 1e-4
  losses of steps 2-3 (AdamW steps on slightly different gradients): relative 1e-2
  25-step DDIM sampling, device vs CPU, uint8 videos: mean |diff| <= 0.5 level, 99 % of pixels within 2 levels
  I3D features, device vs CPU: max |diff| <= 1e-3 x max |feature|
  SyncBatchNorm over 2 processes (NCCL) vs BatchNorm of the global batch: 1e-4
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_AE, mnist_data, prepare_with_autoencoder

from pvdm.config import validate
from pvdm.train.state import read_state
from pvdm.utils.device import Precision, metric_numerics, resolve_device

TIER_DEVICE = os.environ.get("PVDM_CUDA_TIER_DEVICE", "cuda")
ON_GPU = TIER_DEVICE == "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                       reason="no CUDA GPU here (torch.cuda.is_available() is False): the CUDA tier runs on a GPU "
                              "(bash scripts/gpu_check.sh); PVDM_CUDA_TIER_DEVICE=cpu runs its bodies on the CPU"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("PVDM_DETERMINISTIC", None)


def record(name: str, **values: object) -> None:
    """What a test measured, kept under $PVDM_GPU_RESULTS (the check command sets it)."""
    folder = os.environ.get("PVDM_GPU_RESULTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps({"device": TIER_DEVICE, **values}, indent=1,
                                                              default=str))


def make_exp(amp: str = "bf16") -> dict:
    return validate({
        "seed": 3,
        "data": mnist_data(clip_frames=16, num_train=8),
        "autoencoder": {"model": TINY_AE,
                        "stage1": {"steps": 3, "batch_size": 2, "lr": 2e-3, "save_every": 10, "log_every": 1,
                                   "eval_videos": 2, "amp": amp},
                        "gan": {"steps": 3, "batch_size": 2, "lr": 2e-4, "save_every": 10, "log_every": 1,
                                "eval_videos": 2, "eval_every": 10, "patience": 2, "disc_ndf": 8, "amp": amp}},
        "diffusion": {"model": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1,
                                "attention_resolutions": [2], "num_heads": 2},
                      "train": {"steps": 3, "batch_size": 2, "lr": 1e-3, "save_every": 10, "log_every": 1,
                                "ema_every": 1, "cond_prob": 0.5, "amp": amp}},
    }, "cuda tier", definition="experiment")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cuda_tier")
    data, ae = prepare_with_autoencoder(make_exp(), root, TINY_AE)
    return {"data": data, "ae": ae, "root": root}


def losses(folder: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (folder / "log.jsonl").read_text().splitlines() if key in line]


def train_all(world: dict[str, Path], out: Path, amp: str, device: str, init: Path | None = None
              ) -> dict[str, list[float]]:
    """Stage 1, the GAN stage (from ``init``, default this stage 1's model) and the U-Net, 3 steps each;
    their logged losses."""
    from pvdm.train.autoencoder import train_autoencoder
    from pvdm.train.diffusion import train_diffusion

    exp = make_exp(amp)
    train_autoencoder(exp, world["data"], out / "s1", "stage1", device=device)
    train_autoencoder(exp, world["data"], out / "gan", "gan", init=init or out / "s1" / "model.pt", device=device)
    train_diffusion(exp, world["data"], world["ae"], out / "diff", device=device)
    return {"stage1": losses(out / "s1", "g/total"), "gan": losses(out / "gan", "g/total"),
            "diffusion": losses(out / "diff", "loss")}


def pvdm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvdm.cli", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def test_device_values_on_the_command_line(world, tmp_path):
    settings = json.dumps(make_exp())
    values = ["cuda", "cuda:0"] if ON_GPU else ["cpu"]
    for value in values:
        out = tmp_path / value.replace(":", "_")
        run = pvdm("train-autoencoder", "--settings", settings, "--data", str(world["data"]), "--out", str(out),
                   "--device", value, "--max-steps", "1")
        assert run.returncode == 0, run.stderr[-3000:]
        assert read_state(out / "state.pt")["config"]["numerics"]["device"] == TIER_DEVICE
        assert f"device {TIER_DEVICE}" in run.stderr, run.stderr[-2000:]  # distributed.setup's log line
    record("device_values", values=values)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_each_trainer_in_mixed_precision(world, tmp_path, amp):
    got = train_all(world, tmp_path, amp, TIER_DEVICE)
    for name, values in got.items():
        assert len(values) == 3 and np.isfinite(values).all(), (name, values)
    scaler = read_state(tmp_path / "diff" / "state.pt")["scaler"]
    assert (scaler != {}) == (ON_GPU and amp == "fp16")  # fp16 on a GPU scales its loss, nothing else does
    if scaler:
        assert scaler["scale"] > 0
    record(f"trainers_{amp}", losses=got, diffusion_scaler=scaler)


def test_fp32_training_equals_the_cpu(world, tmp_path):
    with metric_numerics():  # TF32 off: fp32 on the GPU is then float32 rounding away from the CPU
        cpu = train_all(world, tmp_path / "cpu", "none", "cpu")
        # The GAN stage starts from the CPU's stage-1 model on both: the same weights, the same first loss.
        gpu = train_all(world, tmp_path / "device", "none", TIER_DEVICE, init=tmp_path / "cpu" / "s1" / "model.pt")
    diffs = {}
    for name in gpu:
        rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(gpu[name], cpu[name], strict=True)]
        diffs[name] = rel
        assert rel[0] <= 1e-4, (name, gpu[name], cpu[name])
        assert max(rel) <= 1e-2, (name, gpu[name], cpu[name])
    record("fp32_vs_cpu", relative_loss_diff=diffs, device_losses=gpu, cpu_losses=cpu)


def test_cpu_state_continues_on_the_device_in_fp16(world, tmp_path):
    from pvdm.checkpoints import load_autoencoder
    from pvdm.models.unet import TriplaneUNet
    from pvdm.train.diffusion import train_diffusion, unet_config

    exp = make_exp("fp16")
    out = tmp_path / "diff"
    train_diffusion(exp, world["data"], world["ae"], out, device="cpu", max_steps=2)
    state = read_state(out / "state.pt")
    assert state["scaler"] == {}  # the CPU never scales
    # The parts of a CPU state load on the device, the empty scaler state into an fp16 scaler too.
    device = resolve_device(TIER_DEVICE)
    model = TriplaneUNet(unet_config(exp["diffusion"]["model"], load_autoencoder(world["ae"]))).to(device)
    model.load_state_dict(state["model"])
    scaler = Precision(device, "fp16").scaler()
    scaler.load_state_dict(state["scaler"])
    # The run: on another device the state is another computation (set aside, started over); on the same, resumed.
    train_diffusion(exp, world["data"], world["ae"], out, device=TIER_DEVICE)
    assert (out / "state.stale.pt").exists() == ON_GPU
    assert np.isfinite(losses(out, "loss")).all() and read_state(out / "state.pt")["step"] == 3
    record("cpu_to_device_resume", scaler_enabled=scaler.is_enabled(), stale=(out / "state.stale.pt").exists())


def test_sampling_25_steps_device_vs_cpu(world, tmp_path):
    from pvdm.checkpoints import load_autoencoder
    from pvdm.diffusion.samplers import Sampler
    from pvdm.models.unet import TriplaneUNet
    from pvdm.sample import SamplingModels, sample_batches
    from pvdm.train.diffusion import unet_config

    torch.manual_seed(0)
    ae = load_autoencoder(world["ae"]).eval()
    unet = TriplaneUNet(unet_config(make_exp()["diffusion"]["model"], ae)).eval()
    videos = {}
    with metric_numerics():
        for name, device in (("device", resolve_device(TIER_DEVICE)), ("cpu", torch.device("cpu"))):
            m = SamplingModels(ae.to(device), unet.to(device), Sampler("ddim", 25, 1.0), device, "none", "ae", "unet")
            sample_batches(m, tmp_path / name, [(0, 4)], seed=0, n_clips=1, desc=f"25 steps on {name}")
            videos[name] = np.load(tmp_path / name / "0000000_0000004.npy").astype(np.int16)
    diff = np.abs(videos["device"] - videos["cpu"])
    within2 = float((diff <= 2).mean())
    record("sampling_25_steps", mean_abs_diff=float(diff.mean()), max_abs_diff=int(diff.max()), within_2=within2)
    assert diff.mean() <= 0.5 and within2 >= 0.99, (diff.mean(), within2)


def test_i3d_features_device_vs_cpu():
    from pvdm.eval.fvd import compute_features
    from pvdm.eval.i3d import load_i3d

    clips = np.random.default_rng(0).integers(0, 256, (2, 16, 64, 64, 3), dtype=np.uint8)
    device = resolve_device(TIER_DEVICE)
    on_device = compute_features(clips, load_i3d(device), device)
    on_cpu = compute_features(clips, load_i3d("cpu"), "cpu")
    rel = float(np.abs(on_device - on_cpu).max() / np.abs(on_cpu).max())
    record("i3d_features", max_rel_diff=rel)
    assert rel <= 1e-3, rel


SYNC_BN = '''
import torch, torch.distributed as dist
from torch import nn
from pvdm.train.distributed import setup, sync_batchnorm
torch.backends.cudnn.allow_tf32 = False
d = setup(DEVICE)
torch.manual_seed(0)
x = torch.randn(4, 3, 5, 6, 6)  # b c t h w, the global batch
plain = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4))
synced = sync_batchnorm(nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4)), d)
synced.load_state_dict(plain.state_dict())
synced = synced.to(d.device)
half = slice(2 * d.rank, 2 * d.rank + 2)
ya, yb = plain(x), synced(x[half].to(d.device))
torch.testing.assert_close(yb.cpu(), ya[half], atol=1e-4, rtol=1e-4)
torch.testing.assert_close(synced[1].running_mean.cpu(), plain[1].running_mean, atol=1e-4, rtol=1e-4)
print("rank", d.rank, type(synced[1]).__name__, dist.get_backend(), "ok")
'''


def test_syncbatchnorm_over_two_processes(tmp_path):
    if ON_GPU and torch.cuda.device_count() < 2:
        pytest.skip(f"SyncBatchNorm + NCCL needs 2 visible GPUs, this machine has {torch.cuda.device_count()}")
    script = tmp_path / "bn.py"
    script.write_text(SYNC_BN.replace("DEVICE", repr(TIER_DEVICE)))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    expected = "SyncBatchNorm nccl" if ON_GPU else "CrossRankBatchNorm gloo"
    assert f"rank 0 {expected} ok" in run.stdout and f"rank 1 {expected} ok" in run.stdout, run.stdout
    record("syncbatchnorm", stdout=run.stdout)


SLOT = '''
import time, torch
from pvdm.utils.device import resolve_device
print(resolve_device("cuda"), flush=True)
time.sleep(30)
'''


def test_local_gpu_slots(tmp_path):
    if not ON_GPU:
        pytest.skip("GPU slots on the CPU: tests/test_device.py (fake device counts)")
    count = torch.cuda.device_count()
    env = {**ENV, "PVDM_GPU_SLOT_DIR": str(tmp_path)}
    env.pop("LOCAL_RANK", None)
    procs = [subprocess.Popen([sys.executable, "-c", SLOT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(min(count, 2))]
    try:
        got = [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    record("gpu_slots", visible=count, devices=got)
    assert len(set(got)) == len(got) and all(g.startswith("cuda:") for g in got), got


def test_deterministic_mode_repeats_a_run(world, tmp_path):
    settings = json.dumps(make_exp("none"))
    env = {**ENV, "PVDM_DETERMINISTIC": "1"}
    walls, shas = {}, []
    for name, e in (("default", ENV), ("deterministic", env), ("deterministic_again", env)):
        t0 = time.perf_counter()
        run = pvdm("train-diffusion", "--settings", settings, "--data", str(world["data"]), "--autoencoder",
                   str(world["ae"]), "--out", str(tmp_path / name), "--device", TIER_DEVICE, env=e)
        walls[name] = time.perf_counter() - t0
        assert run.returncode == 0, run.stderr[-3000:]
        if name != "default":
            shas.append(hashlib.sha256((tmp_path / name / "model.pt").read_bytes()).hexdigest())
    record("deterministic_mode", wall_s=walls, note="3 tiny steps in a fresh process each: start-up dominates; "
           "not the mode's cost at paper scale")
    assert shas[0] == shas[1]
