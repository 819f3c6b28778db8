"""benchmarks/gpu_suite.py on CPU at tiny width: every item runs (an item that does not run fails the
suite and this test), the rates carry the per-GPU batch `pvdm plan` matches them on, the paper config's
per-GPU batches, and `pvdm plan` reading the file the suite writes."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"


def load_suite():
    spec = importlib.util.spec_from_file_location("pvdm_bench_gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return load_suite()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    cmd = [sys.executable, str(SUITE), "--device", "cpu", "--scale", "tiny", "--threads", "1", "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = out.glob("gpu_suite_cpu*.json")
    return out, json.loads(path.read_text())


@pytest.mark.slow
def test_every_item_runs(run, suite):
    out, res = run
    items = res["items"]
    assert list(items) == suite.ITEM_NAMES
    for name, rec in items.items():
        assert rec["status"] == "ok", (name, rec)  # "skipped" or "error" fails
    assert items["ae_stage1"]["clips_per_s"] > 0 and items["ae_gan"]["clips_per_s"] > 0
    assert items["unet_train"]["samples_per_s"] > 0 and items["i3d"]["clips_per_s"] > 0
    assert items["sampling"]["per_step_s"] > 0 and items["sampling"]["s_per_clip_400"] > 0
    # fp32 on the CPU against the CPU: identical (on a GPU with TF32 off: float32 rounding only)
    assert items["fp32_parity"]["ae_max_abs_diff"] == 0 and items["fp32_parity"]["unet_loss_rel_diff"] == 0
    assert items["unet_train"]["precision"] == "amp none: float32"
    assert items["ae_stage1"]["precision"] == "amp bf16: float32"  # the CPU runs fp32 whatever the config asks
    assert (out / Path(next(out.glob("gpu_suite_cpu*.json")).name).with_suffix(".md")).is_file()


@pytest.mark.slow
def test_plan_reads_the_rates_at_their_per_gpu_batch(run, tmp_path):
    from pvdm.config import load_config
    from pvdm.report.cost import load_rates, plan_costs

    out, res = run
    tiny = out / "throughput_tiny_cpu.json"
    with pytest.raises(ValueError, match="valid_for_planning is false"):
        load_rates(tiny)
    table = json.loads(tiny.read_text())
    rates = table["rates"]
    assert [e["per_gpu_batch"] for e in rates["ae_train_clips_per_s"]] == [1]
    assert [e["per_gpu_batch"] for e in rates["unet_train_samples_per_s"]] == [2]
    table["valid_for_planning"] = True
    (tmp_path / "throughput.json").write_text(json.dumps(table))
    cfg = load_config(REPO / "config" / "ucf101.yaml")
    costs, measured_on = plan_costs(cfg, tmp_path / "throughput.json")
    by_rule = {c.rule: c for c in costs}
    s1 = cfg["experiments"]["ucf101"]["autoencoder"]["stage1"]
    # ucf101 runs 1 clip per GPU, the batch the tiny suite timed: 8 GPUs x steps x 1 x grad_accum / rate
    expected = 8 * s1["steps"] * 1 * s1["grad_accum"] / rates["ae_train_clips_per_s"][0]["value"] / 3600
    assert by_rule["train_autoencoder"].gpu_hours == pytest.approx(expected)
    assert by_rule["train_autoencoder"].measured_on == measured_on and "cpu" in measured_on.lower()
    # ucf101's U-Net runs 8 samples per GPU; the tiny suite timed 2: not used
    assert by_rule["train_diffusion"].gpu_hours is None


def test_paper_config_per_gpu_batches(suite):
    _, batches = suite.experiment("paper", "config/ucf101.yaml", "ucf101")
    # 8 clips / 8 GPUs, 64 samples / 8 GPUs, 32 samples per sampling shard (one GPU)
    assert batches == {"ae_stage1": 1, "ae_gan": 1, "unet_train": 8, "sampling": 32, "i3d": 32}


def test_an_item_that_does_not_run_fails_the_suite(suite, tmp_path, monkeypatch):
    s = suite.Suite.__new__(suite.Suite)  # no stores or models: the bookkeeping only
    s.args = argparse.Namespace(items=["ae_stage1", "fp32_parity"], out_dir=str(tmp_path), scale="tiny")
    s.device, s.items, s.rates = torch.device("cpu"), {}, {}
    s.header = {"device_name": "cpu-test", "date": "d", "scale": "tiny", "gpu": None, "torch": "t", "cuda": None,
                "config": "c", "experiment": "e"}

    def broken() -> dict:
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(s, "ae_stage1", broken)
    monkeypatch.setattr(s, "fp32_parity", lambda: {"ae_max_abs_diff": 0.0})
    assert s.run() == 1
    assert s.items["ae_stage1"]["status"] == "error" and "out of memory" in s.items["ae_stage1"]["error"]
    assert s.items["fp32_parity"]["status"] == "ok"  # the next item still ran
    saved = json.loads((tmp_path / "gpu_suite_cpu-test_d.json").read_text())
    assert saved["items"]["ae_stage1"]["status"] == "error"
