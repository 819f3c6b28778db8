"""Multi-process training under torchrun (gloo on CPU): 2 processes of a global batch end where 1
process of the same global batch ends, for autoencoder stage 1, the GAN stage and diffusion; a
2-process run killed with SIGKILL resumes and finishes; batch statistics span the ranks.

Not bit-equal: DDP averages the two ranks' gradients of half-batch means, 1 process takes the
gradient of the whole-batch mean; the sums run in another order (float rounding, ~1e-7 relative).
Adam's first steps divide a gradient by its own magnitude, so an entry whose gradient is at the
rounding level moves by up to lr per step in either run: a few entries differ by up to ~4e-4 after
4 steps at lr 1e-3, while the bulk stays at ~1e-7. The check therefore bounds the distribution of
|difference| over all weights (median <= 2e-6, 99th percentile <= 1e-4, max <= 2 x steps x lr), which
any real DDP error (unaveraged gradients, per-rank batch statistics, other frames or noise per
rank) exceeds by orders of magnitude in the median. Conv biases that feed a BatchNorm have an exact
zero gradient (the norm removes them) and are left out, with the running means that absorb them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY_AE, kill_when, mnist_data

from pvdm.checkpoints import load_autoencoder, load_diffusion
from pvdm.config import validate
from pvdm.data.prepare import prepare

pytestmark = pytest.mark.slow
LR, STEPS = 1e-3, 4
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def make_exp() -> dict:
    exp = {
        "seed": 4,
        "data": mnist_data(clip_frames=16, num_train=12),
        "autoencoder": {
            "model": TINY_AE,
            "stage1": {"steps": STEPS, "batch_size": 2, "lr": LR, "save_every": 1, "log_every": 1, "eval_videos": 2,
                       "l1_weight": 0.0, "mse_weight": 1.0, "lpips_weight": 0.0},
            "gan": {"steps": STEPS, "batch_size": 2, "lr": LR, "save_every": 1, "log_every": 1, "eval_videos": 2,
                    "eval_every": 2, "patience": 5, "disc_ndf": 8, "lpips_weight": 0.0},
        },
        "diffusion": {
            "model": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                      "num_heads": 2},
            "train": {"steps": STEPS, "batch_size": 4, "lr": LR, "save_every": 1, "log_every": 1, "ema_every": 1,
                      "cond_prob": 0.5, "cache_latents": True},
        },
    }
    return validate(exp, "test", definition="experiment")


def pvdm(nproc: int, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pvdm.cli", "--nproc", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def gradient_free(key: str) -> bool:
    """PatchGAN conv biases before a BatchNorm (blocks 1..n_layers) and the running means absorbing them."""
    return key.endswith("running_mean") or (key.endswith(".0.bias") and not key.startswith(("model0.", "model4.")))


def assert_same_training(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], name: str, discriminator: bool = False) -> None:
    assert a.keys() == b.keys()
    keys = [k for k in a if a[k].dtype.is_floating_point and not (discriminator and gradient_free(k))]
    diff = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in keys])
    median, p99, worst = diff.median().item(), diff.quantile(0.99).item(), diff.max().item()
    print(f"{name}: |1 vs 2 processes| median {median:.2g}, 99th percentile {p99:.2g}, max {worst:.2g}")
    assert median <= 2e-6 and p99 <= 1e-4 and worst <= 2 * STEPS * LR, name


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare(make_exp(), out)
    return out


def test_two_processes_end_where_one_process_ends(data, tmp_path):
    settings = json.dumps(make_exp())
    common = ["--settings", settings, "--data", str(data)]
    weights = {}
    for n in (1, 2):
        run = pvdm(n, "train-autoencoder", *common, "--out", str(tmp_path / f"s1_{n}"))
        assert run.returncode == 0, run.stderr[-3000:]
        if n == 2:
            assert "launching 2 processes" in run.stderr and "processes: 2 (gloo)" in run.stderr
        # the GAN stage and diffusion of both runs start from the same 1-process weights
        run = pvdm(n, "finetune-gan", *common, "--init", str(tmp_path / "s1_1" / "model.pt"),
                   "--out", str(tmp_path / f"gan_{n}"))
        assert run.returncode == 0, run.stderr[-3000:]
        assert n == 1 or "CrossRankBatchNorm (gloo)" in run.stderr
        run = pvdm(n, "train-diffusion", *common, "--autoencoder", str(tmp_path / "gan_1" / "model.pt"),
                   "--out", str(tmp_path / f"d_{n}"))
        assert run.returncode == 0, run.stderr[-3000:]
        gan_state = torch.load(tmp_path / f"gan_{n}" / "state.pt", weights_only=True)
        weights[n] = {
            "stage1": load_autoencoder(tmp_path / f"s1_{n}" / "model.pt").state_dict(),
            "gan autoencoder": gan_state["model"],
            "discriminator_2d": gan_state["discriminator_2d"],
            "discriminator_3d": gan_state["discriminator_3d"],
            "diffusion": load_diffusion(tmp_path / f"d_{n}" / "model.pt").state_dict(),
            "ema": load_diffusion(tmp_path / f"d_{n}" / "ema.pt").state_dict(),
        }
    for part in weights[1]:
        assert_same_training(weights[1][part], weights[2][part], part, discriminator=part.startswith("discriminator"))
    # the logs hold the loss of the global batch (the mean over ranks), step by step
    rows = {n: [json.loads(x) for x in (tmp_path / f"d_{n}" / "log.jsonl").read_text().splitlines()] for n in (1, 2)}
    assert [r["step"] for r in rows[2]] == [1, 2, 3, 4]
    for a, b in zip(rows[1], rows[2], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # an odd global batch cannot be split over 2 processes: a clear error before any work
    exp = make_exp()
    exp["diffusion"]["train"]["batch_size"] = 3
    run = pvdm(2, "train-diffusion", "--settings", json.dumps(exp), "--data", str(data),
               "--autoencoder", str(tmp_path / "gan_1" / "model.pt"), "--out", str(tmp_path / "odd"))
    assert run.returncode != 0 and "diffusion.train.batch_size = 3 does not split over 2 processes" in run.stderr


def test_killed_two_process_run_resumes(data, tmp_path):
    exp = make_exp()
    exp["diffusion"]["train"]["steps"] = 40
    common = ["--settings", json.dumps(exp), "--data", str(data)]
    assert pvdm(1, "train-autoencoder", *common, "--out", str(tmp_path / "ae")).returncode == 0
    ae = str(tmp_path / "ae" / "model.pt")
    straight = pvdm(2, "train-diffusion", *common, "--autoencoder", ae, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    cmd = [sys.executable, "-m", "pvdm.cli", "--nproc", "2", "train-diffusion", *common, "--autoencoder", ae,
           "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state, log = tmp_path / "killed" / "state.pt", tmp_path / "killed" / "log.jsonl"
    # a cheap look: state.pt is saved every step; the launcher and both workers die, as on a node failure
    kill_when(proc, lambda: log.exists() and log.read_text().count("\n") >= 3, signal.SIGKILL, group=True)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 2 <= killed_at < 40
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {state} at step {killed_at}" in rerun.stderr
    a = load_diffusion(tmp_path / "straight" / "model.pt").state_dict()
    b = load_diffusion(tmp_path / "killed" / "model.pt").state_dict()
    assert max_diff(a, b) == 0.0  # same process count: the resumed run is the uninterrupted one


def test_cross_rank_batchnorm_is_batchnorm_of_the_global_batch(tmp_path):
    script = tmp_path / "bn.py"
    script.write_text(textwrap.dedent('''
        import torch, torch.distributed as dist
        from torch import nn
        from pvdm.train.distributed import setup, sync_batchnorm, CrossRankBatchNorm
        d = setup("cpu")
        torch.manual_seed(0)
        x = torch.randn(4, 3, 5, 6, 6)  # b c t h w, the global batch
        plain = nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4))
        synced = sync_batchnorm(nn.Sequential(nn.Conv3d(3, 4, 3), nn.BatchNorm3d(4)), d)
        synced.load_state_dict(plain.state_dict())
        assert isinstance(synced[1], CrossRankBatchNorm)
        half = slice(2 * d.rank, 2 * d.rank + 2)
        xa, xb = x.clone().requires_grad_(), x[half].clone().requires_grad_()
        ya, yb = plain(xa), synced(xb)
        (ya ** 2).mean().backward()
        ((yb ** 2).mean() / d.world_size).backward()
        for p in synced.parameters():
            dist.all_reduce(p.grad)
        torch.testing.assert_close(yb, ya[half], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(xb.grad, xa.grad[half], atol=1e-6, rtol=1e-5)
        for p, q in zip(plain.parameters(), synced.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(synced[1].running_var, plain[1].running_var, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(synced[1].running_mean, plain[1].running_mean, atol=1e-6, rtol=1e-5)
        print("rank", d.rank, "ok")
    '''))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rank 0 ok" in run.stdout and "rank 1 ok" in run.stdout


def test_collectives_wait_longer_than_nccls_default_for_a_large_save(monkeypatch):
    # rank 0 writes state.pt while the others wait in a barrier: NCCL's 10-minute default is too short
    from datetime import timedelta

    import torch.distributed as dist

    from pvdm.train import distributed

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.update(backend=backend, **kw))
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    distributed.setup("cpu")
    assert seen == {"backend": "gloo", "timeout": timedelta(minutes=60)}
    monkeypatch.setenv("PVDM_COLLECTIVE_TIMEOUT_MIN", "180")
    distributed.setup("cpu")
    assert seen["timeout"] == timedelta(minutes=180)
    monkeypatch.setenv("PVDM_COLLECTIVE_TIMEOUT_MIN", "soon")
    with pytest.raises(ValueError, match="PVDM_COLLECTIVE_TIMEOUT_MIN='soon'"):
        distributed.setup("cpu")
