"""Autoencoder training: loss goes down, determinism, resume equivalence (also after SIGKILL),
early stopping, clear config errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_AE, kill_when, mnist_data

from pvdm.checkpoints import load_autoencoder
from pvdm.config import validate
from pvdm.data.prepare import prepare
from pvdm.train.autoencoder import train_autoencoder
from pvdm.train.early_stopping import DivergenceGuard, EarlyStopping

MODEL = TINY_AE


def make_exp(**stage1) -> dict:
    exp = {
        "seed": 3,
        "data": mnist_data(clip_frames=12, num_train=16),
        "autoencoder": {
            "model": MODEL,
            "stage1": {
                "steps": 6,
                "batch_size": 2,
                "lr": 2e-3,
                "save_every": 2,
                "log_every": 1,
                "eval_videos": 4,
                **stage1,
            },
            "gan": {
                "steps": 6,
                "batch_size": 2,
                "lr": 2e-4,
                "save_every": 1,
                "log_every": 1,
                "eval_videos": 4,
                "eval_every": 2,
                "patience": 2,
                "disc_ndf": 8,
            },
        },
    }
    return validate(exp, "test", definition="experiment")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    prepare(make_exp(), out)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_autoencoder(path).state_dict()


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_stage1_learns_and_writes_outputs(data_dir, tmp_path):
    # MSE: the original's L1 recipe sits on the all-black plateau of Moving MNIST for a long time.
    exp = make_exp(steps=12, l1_weight=0.0, mse_weight=1.0, lpips_weight=1.0)
    metrics = train_autoencoder(exp, data_dir, tmp_path, "stage1")
    for name in ("model.pt", "metrics.json", "state.pt", "log.jsonl", "recon_grid.mp4", "recon_grid.gif"):
        assert (tmp_path / name).is_file(), name
    assert metrics["heldout_trained"]["psnr"] > metrics["heldout_untrained"]["psnr"] + 2.0
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))
    first, last = rows[0]["g/total"], sum(r["g/total"] for r in rows[-3:]) / 3
    assert last < first
    assert (tmp_path / "tensorboard").is_dir()


@pytest.mark.slow
def test_determinism_and_resume_equivalence(data_dir, tmp_path):
    exp = make_exp()
    train_autoencoder(exp, data_dir, tmp_path / "a", "stage1")
    train_autoencoder(exp, data_dir, tmp_path / "b", "stage1")
    assert_same(weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt"))
    # stop after 3 steps (a saved state at step 2 and 3), then rerun the same command: resumes
    partial = train_autoencoder(exp, data_dir, tmp_path / "c", "stage1", max_steps=3)
    assert partial == {"step": 3, "stopped": "max_steps"} and not (tmp_path / "c" / "model.pt").exists()
    train_autoencoder(exp, data_dir, tmp_path / "c", "stage1")
    assert_same(weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "c" / "model.pt"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # the log of the resumed run is continuous


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(data_dir, tmp_path):
    exp = make_exp(steps=8, save_every=1)
    train_autoencoder(exp, data_dir, tmp_path / "straight", "stage1")
    cmd = [
        sys.executable,
        "-m",
        "pvdm.cli",
        "train-autoencoder",
        "--settings",
        json.dumps(exp),
        "--data",
        str(data_dir),
        "--out",
        str(tmp_path / "killed"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "state.pt"
    kill_when(proc, lambda: state.exists() and torch.load(state, weights_only=True)["step"] >= 3, signal.SIGKILL,
              timeout=240)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(state, weights_only=True)["step"]
    assert 3 <= killed_at < 8
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from {state} at step {killed_at}" in rerun.stderr
    assert_same(weights(tmp_path / "straight" / "model.pt"), weights(tmp_path / "killed" / "model.pt"))


@pytest.mark.slow
def test_gan_stage_early_stopping_history(data_dir, tmp_path):
    exp = make_exp(steps=4)
    train_autoencoder(exp, data_dir, tmp_path / "s1", "stage1")
    init = weights(tmp_path / "s1" / "model.pt")
    # No evaluation can beat the start by 100 dB: with patience 2 and an evaluation every 2 steps,
    # training must stop at step 4 and keep the starting model.
    exp["autoencoder"]["gan"].update(min_delta=100.0, patience=2, eval_every=2, steps=6)
    metrics = train_autoencoder(exp, data_dir, tmp_path / "gan", "gan", init=tmp_path / "s1" / "model.pt")
    history = json.loads((tmp_path / "gan" / "history.json").read_text())
    assert history["monitor"] == "psnr" and [e["step"] for e in history["evaluations"]] == [0, 2, 4]
    assert history["stopped_early"] and history["stopped_at"] == 4
    assert history["stop_reason"].startswith("early stop: no psnr improvement in 2 evaluations")
    assert history["best_step"] == 0 == metrics["best_step"]
    assert history["best"] == pytest.approx(history["evaluations"][0]["psnr"])
    assert_same(weights(tmp_path / "gan" / "model.pt"), init)  # the best = the untouched start
    # Without the impossible margin the stage runs all its steps; model.pt is the best evaluation.
    exp["autoencoder"]["gan"].update(min_delta=0.0, patience=10)
    train_autoencoder(exp, data_dir, tmp_path / "gan2", "gan", init=tmp_path / "s1" / "model.pt")
    history = json.loads((tmp_path / "gan2" / "history.json").read_text())
    assert not history["stopped_early"] and history["stopped_at"] == 6 and history["stop_reason"] == "reached 6 steps"
    assert [e["step"] for e in history["evaluations"]] == [0, 2, 4, 6]
    best = max(history["evaluations"], key=lambda e: e["psnr"])
    assert history["best_step"] == best["step"] and history["best"] == pytest.approx(best["psnr"])
    assert_same(weights(tmp_path / "gan2" / "model.pt"), weights(tmp_path / "gan2" / "best.pt"))


def test_early_stopping_on_synthetic_monitor():
    stop = EarlyStopping("psnr", patience=3, min_delta=0.1)
    values = [20.0, 21.0, 21.05, 22.0, 21.9, 21.0, 15.0]  # rises, then diverges
    stopped_at = None
    for i, v in enumerate(values):
        stop.update(i, {"psnr": v})
        if stop.should_stop:
            stopped_at = i
            break
    assert stopped_at == 6 and stop.best == 22.0 and stop.best_step == 3
    assert [h["best"] for h in stop.history] == [True, True, False, True, False, False, False]
    lp = EarlyStopping("lpips", patience=1)
    lp.update(0, {"lpips": 0.5})
    lp.update(1, {"lpips": float("nan")})
    assert lp.should_stop and lp.best == 0.5
    restored = EarlyStopping("psnr", 3, 0.1)
    restored.load_state_dict(stop.state_dict())
    assert restored.best_step == 3 and restored.should_stop


def test_divergence_guard():
    g = DivergenceGuard(spike_factor=5.0, window=10, warmup=3)
    assert all(g.check(v) is None for v in [1.0, 1.1, 0.9, 1.0])
    assert "spike" in g.check(50.0)
    assert "non-finite" in g.check(float("nan"))


def test_bad_model_config_is_clear(data_dir, tmp_path):
    exp = make_exp()
    exp["autoencoder"]["model"] = {**MODEL, "resolution": 36}
    with pytest.raises(ValueError, match="resolution 36 is not divisible by patch_size 8"):
        train_autoencoder(exp, data_dir, tmp_path, "stage1")
    exp["autoencoder"]["model"] = {**MODEL, "resolution": 64}
    with pytest.raises(ValueError, match="does not fit the clips"):
        train_autoencoder(exp, data_dir, tmp_path, "stage1")
