"""The Snakemake workflow: lint, formatting, an end-to-end run of the data stage, no-op reruns."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

TINY = """\
experiments:
  tiny:
    seed: 0
    data:
      dataset: moving_mnist
      resolution: 32
      clip_frames: 8
      long_frames: 16
      long_videos: 4
      workers: 1
      moving_mnist: {num_train: 8, num_test: 4}
"""


def snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(cwd), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)


def test_lint_and_format():
    lint = subprocess.run(
        [str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, env=ENV
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert fmt.returncode == 0, fmt.stderr
    ruff = subprocess.run(
        [str(BIN / "ruff"), "check", "pvdm", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert ruff.returncode == 0, ruff.stdout


@pytest.mark.slow
def test_data_stage_end_to_end_and_noop_rerun(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = snakemake("--cores", "2", "--configfile", str(cfg), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = tmp_path / "results" / "tiny" / "data" / "manifest.json"
    assert manifest.is_file() and (tmp_path / "results" / "tiny" / "logs" / "prepare_data.log").is_file()
    mtime = manifest.stat().st_mtime_ns
    again = snakemake("--cores", "2", "--configfile", str(cfg), cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert manifest.stat().st_mtime_ns == mtime
    # a changed data setting reruns the data stage (params trigger), shown by a dry run
    cfg.write_text(TINY.replace("resolution: 32", "resolution: 16"))
    dry = snakemake("-n", "--cores", "1", "--configfile", str(cfg), cwd=tmp_path)
    assert dry.returncode == 0
    # the reason is the data settings (a rule param), and nothing else
    assert re.search(r"params have changed since last execution:\n\s+prepare_data\n", dry.stdout), dry.stdout[-3000:]


def test_bad_config_fails_before_any_job(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(TINY.replace("clip_frames: 8", "clip_frame: 8"))
    run = snakemake("--cores", "1", "--configfile", str(cfg), cwd=tmp_path)
    assert run.returncode != 0
    out = run.stdout + run.stderr
    assert "experiments.tiny.data.clip_frame" in out and str(cfg) in out
    assert not (tmp_path / "results").exists()


def planned_jobs(out: str) -> dict[str, int]:
    block = out.split("Job stats:")[1].split("\n\n")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", block, re.M) if m[0] != "total"}


def test_default_target_dry_run(tmp_path):
    # From an empty working directory: the whole embedded default is planned, job by job.
    dry = snakemake("-n", "--cores", "1", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert planned_jobs(dry.stdout) == {
        "prepare_data": 1, "train_autoencoder": 1, "finetune_gan": 1, "eval_recon": 1, "train_diffusion": 1,
        # 16-frame clips of the trained and of the untrained U-Net (no long videos in the CPU demo)
        "sample": 2, "gather_samples": 2, "eval_fvd": 2, "paper_figures": 1, "paper_table": 1, "all": 1,
    }
    paper = snakemake("-n", "--cores", "1", "--configfile", str(REPO / "config" / "ucf101.yaml"), cwd=tmp_path)
    assert paper.returncode == 0, paper.stderr[-2000:]
    jobs = planned_jobs(paper.stdout)
    # two sample sets (16-frame clips and 128-frame videos), each scattered over resources.sample.shards jobs
    shards = yaml.safe_load((REPO / "config" / "ucf101.yaml").read_text())["experiments"]["ucf101"]["resources"]["sample"]["shards"]
    assert shards > 1
    assert jobs["download_dataset"] == 1 and jobs["gather_samples"] == 2 and jobs["sample"] == 2 * shards


def test_embedded_default_is_the_default_config(tmp_path):
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "c.yaml")
    dry = snakemake("-n", "--cores", "1", cwd=tmp_path)
    assert dry.returncode == 0 and "results/mnist/data/manifest.json" in dry.stdout
