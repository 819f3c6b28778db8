"""The experiment plan (pvdm.dag), without Snakemake: paths, checkpoints, sampler, jobs, table rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv

import pytest
import yaml
from conftest import DATA, REPO

from pvdm.config import load_config
from pvdm.dag import Dag, Layout
from pvdm.diffusion.samplers import Sampler


@pytest.fixture
def tiny() -> Dag:
    return Dag(load_config(DATA / "tiny.yaml"))


def test_paths_checkpoints_and_sampler(tiny):
    e = tiny["tiny"]
    assert e.path(Layout.gan) == "results/tiny/autoencoder/gan"
    assert e.autoencoder_checkpoint == "results/tiny/autoencoder/gan/model.pt"
    assert e.diffusion_checkpoint("model") == "results/tiny/diffusion/ema.pt"  # sampling.ema defaults to true
    assert e.diffusion_checkpoint("untrained") == "results/tiny/diffusion/untrained.pt"
    assert e.weights_label("model") == "ema" and e.weights_label("untrained") == "untrained"
    assert e.sampler == Sampler("ddim", 3, 1.0) and e.sampler.label == "ddim3_eta1"
    assert e.clip_length == 16 and e.long_frames == 48
    assert e.sample_runs() == [("model", 16), ("untrained", 16), ("model", 48)]
    assert e.sample_count(16) == 4 and e.sample_count(48) == 2
    assert e.fvd_count(16) == 4 and e.fvd_count(48) == 2  # long videos: at most the number sampled
    assert e.real_store(16) == "results/tiny/data/train" and e.real_store(48) == "results/tiny/data/train_long"
    assert e.checkpoints_to_publish() == [
        "results/tiny/autoencoder/gan/model.pt", "results/tiny/diffusion/ema.pt", "results/tiny/diffusion/untrained.pt",
    ]


def test_metric_files_targets_and_table_rows(tiny):
    e = tiny["tiny"]
    assert e.metric_files() == [
        "results/tiny/metrics/recon.json", "results/tiny/metrics/fvd16_model.json",
        "results/tiny/metrics/fvd16_untrained.json", "results/tiny/metrics/fvd48_model.json",
    ]
    assert tiny.final_targets() == [
        "results/tiny/data/manifest.json", "results/tiny/autoencoder/stage1/model.pt",
        "results/tiny/autoencoder/gan/model.pt", "results/paper/figures/tiny_autoencoder_16.png",
        "results/paper/figures/tiny_diffusion_16.png", "results/paper/figures/tiny_samples_16.png",
        "results/paper/figures/tiny_compare_16.png", "results/paper/table1.md",
        # the checkpoints the samples come from, asked for directly: one lost in a killed retraining is rebuilt
        "results/tiny/diffusion/ema.pt", "results/tiny/diffusion/untrained.pt",
    ]
    rows = tiny.table_rows()
    assert [r["kind"] for r in rows] == ["ours", "untrained", "real_floor"]
    assert rows[0]["fvd16"] == "results/tiny/metrics/fvd16_model.json"
    assert rows[0]["fvd128"] == "results/tiny/metrics/fvd48_model.json" and rows[0]["label"] == "Tiny (CI)"
    assert rows[1] == {"id": "tiny_untrained", "label": "Tiny (CI): untrained U-Net", "dataset": "moving_mnist",
                       "kind": "untrained", "fvd16": "results/tiny/metrics/fvd16_untrained.json"}
    assert rows[2]["fvd16"] == rows[0]["fvd16"] and "recon" not in rows[2]
    assert sorted(tiny.table_inputs()) == sorted(e.metric_files())


def test_settings_are_the_sections_a_job_reads(tiny):
    e = tiny["tiny"]
    s = json.loads(e.settings("autoencoder.model", "autoencoder.gan"))
    assert set(s) == {"seed", "autoencoder"} and set(s["autoencoder"]) == {"model", "gan"}
    assert s["seed"] == 1 and s["autoencoder"]["gan"]["patience"] == 2
    assert json.loads(e.settings("sampling"))["sampling"]["sampler"] == {"name": "ddim", "steps": 3, "eta": 1.0}


def test_options_change_the_plan(tmp_path):
    cfg = yaml.safe_load((DATA / "tiny.yaml").read_text())
    s = cfg["experiments"]["tiny"]["sampling"]
    s.update(ema=False, untrained_baseline=False, long_videos=0)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    e = Dag(load_config(tmp_path / "c.yaml"))["tiny"]
    assert e.diffusion_checkpoint("model") == "results/tiny/diffusion/model.pt" and e.weights_label("model") == "raw"
    assert e.sample_runs() == [("model", 16)] and e.long_frames is None
    assert [r["kind"] for r in e.table_rows()] == ["ours", "real_floor"] and "fvd128" not in e.table_rows()[0]
    assert e.floor_option(16) == ""  # eval.floor_videos unset: the protocol's two halves
    cfg["experiments"]["tiny"]["eval"]["floor_videos"] = 1000
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    e = Dag(load_config(tmp_path / "c.yaml"))["tiny"]
    assert e.floor_option(16) == f"--floor-videos {e.fvd_count(16)}"  # at most the FVD's own N
    # no eval section: no metrics, no table; no sampling: no figures
    del cfg["experiments"]["tiny"]["eval"], cfg["experiments"]["tiny"]["sampling"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    plan = Dag(load_config(tmp_path / "c.yaml"))
    assert plan["tiny"].metric_files() == [] and plan.table_rows() == []
    assert plan.final_targets() == [
        "results/tiny/data/manifest.json", "results/tiny/autoencoder/stage1/model.pt",
        "results/tiny/autoencoder/gan/model.pt",
    ]


def test_released_experiments_and_paper_configs():
    plan = Dag(load_config(REPO / "config" / "released_sky.yaml"))
    e = plan["sky_released"]
    assert e.released and e.autoencoder_checkpoint == "results/sky_released/released/autoencoder.pt"
    assert e.diffusion_checkpoint("model") == e.diffusion_checkpoint("untrained") == "results/sky_released/released/diffusion.pt"
    assert ("untrained", 16) not in e.sample_runs() and e.trains_autoencoder is False
    assert [r["kind"] for r in e.table_rows()] == ["released", "real_floor"]
    ucf = Dag(load_config(REPO / "config" / "ucf101.yaml"))["ucf101"]
    assert ucf.sampler == Sampler("ddim", 400, 1.0)  # the paper's sampler
    assert ucf.raw_inputs() == ["results/raw/ucf101/download.json"]
    assert ucf.sample_runs() == [("model", 16), ("model", 128)]


def test_targets_must_name_experiments(tiny):
    cfg = dict(tiny.config, targets=["nope"])
    with pytest.raises(ValueError, match=r"targets \['nope'\] are not experiments"):
        Dag(cfg)


@pytest.mark.slow
def test_schema_ships_inside_a_non_editable_install(tmp_path):
    """`pip install --no-deps .` into a fresh venv (dependencies from this environment) validates a config."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    site = next((env_dir / "lib").glob("python*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages")]
    (site / "deps.pth").write_text("\n".join(here) + "\n")  # torch & co. from this environment
    py = env_dir / "bin" / "python"
    # Build from a copy: setuptools writes build/ and *.egg-info/ beside the sources it builds.
    src = tmp_path / "src"
    shutil.copytree(REPO / "pvdm", src / "pvdm", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    build = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    probe = (
        "import pvdm, pvdm.config as c; from pathlib import Path; "
        "cfg = c.load_config(Path('cfg.yaml')); "
        "print(pvdm.__file__); print(cfg['experiments']['mnist']['eval']['bootstrap'])"
    )
    shutil_cfg = (REPO / "config" / "config.yaml").read_text()
    (tmp_path / "cfg.yaml").write_text(shutil_cfg)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(py), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    where, bootstrap = run.stdout.split()
    assert str(site) in where and not where.startswith(str(REPO))  # the installed copy, not the checkout
    assert int(bootstrap) == load_config(REPO / "config" / "config.yaml")["experiments"]["mnist"]["eval"]["bootstrap"]


