"""A changed setting never returns stale results (issue 19): training resumes only into the same
computation, a DAG with a lost checkpoint is not "complete", numbers do not follow --cores, a NaN
autoencoder is refused, a multi-process job stops resumably with one line, bad arguments fail before
anything is created."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, TINY_AE, mnist_data, prepare_with_autoencoder
from kill_matrix import compare_runs, job_pids, wait_until

from pvdm.checkpoints import CheckpointError, load_autoencoder, save_autoencoder
from pvdm.config import validate
from pvdm.data.prepare import prepare
from pvdm.train.autoencoder import train_autoencoder
from pvdm.train.signals import RESUMABLE_EXIT_CODE
from pvdm.utils.io import atomic_torch_save, sha256_file

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}


def make_exp(num_train: int = 8, steps: int = 4) -> dict:
    train = {"steps": steps, "batch_size": 2, "save_every": 2, "log_every": 1, "eval_videos": 2}
    exp = {
        "seed": 3,
        "data": mnist_data(clip_frames=16, num_train=num_train),
        "autoencoder": {"model": {**TINY_AE, "frames": 16}, "stage1": {**train, "lr": 2e-3},
                        "gan": {**train, "lr": 2e-4, "eval_every": 2, "patience": 5, "disc_ndf": 8}},
        "diffusion": {
            "model": {"model_channels": 32, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                      "num_heads": 2},
            "train": {"steps": 40, "batch_size": 2, "lr": 1e-3, "save_every": 1, "log_every": 1, "ema_every": 2,
                      "cond_prob": 0.0},
        },
        "sampling": {"num_videos": 2, "sampler": {"steps": 3}},
    }
    return validate(exp, "test", definition="experiment")


def pvdm(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pvdm.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=900, **kw)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_autoencoder(path).state_dict()


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- resume keyed on content ---------------------------------------------------------------------


def test_new_clips_or_a_new_start_checkpoint_at_the_same_paths_start_over(tmp_path, one_thread, caplog):
    data, out, gan = tmp_path / "data", tmp_path / "stage1", tmp_path / "gan"
    prepare(make_exp(num_train=8), data)
    train_autoencoder(make_exp(), data, out, "stage1")
    train_autoencoder(make_exp(), data, gan, "gan", init=out / "model.pt")
    first, first_gan = weights(out / "model.pt"), weights(gan / "model.pt")

    # the same command on the same paths, but the store now holds other clips
    prepare(make_exp(num_train=6), data)
    caplog.clear()
    train_autoencoder(make_exp(), data, out, "stage1")
    assert "belongs to another computation (changed: train_store)" in caplog.text
    assert "resuming from" not in caplog.text
    assert (out / "state.stale.pt").exists()  # set aside, not deleted
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 4
    assert not same(first, weights(out / "model.pt"))
    # a straight run on the new clips is what the rerun made
    train_autoencoder(make_exp(), data, tmp_path / "straight", "stage1")
    assert same(weights(tmp_path / "straight" / "model.pt"), weights(out / "model.pt"))

    # the GAN stage's starting checkpoint changed content at the same path: it starts over
    caplog.clear()
    train_autoencoder(make_exp(), data, gan, "gan", init=out / "model.pt")
    assert "changed: init_sha256, train_store)" in caplog.text
    assert not same(first_gan, weights(gan / "model.pt"))


def test_another_thread_count_starts_over_and_the_same_one_resumes(tmp_path, one_thread, caplog):
    data, out = tmp_path / "data", tmp_path / "run"
    prepare(make_exp(), data)
    train_autoencoder(make_exp(steps=6), data, out, "stage1", max_steps=3)
    torch.set_num_threads(2)
    try:
        caplog.clear()
        train_autoencoder(make_exp(steps=6), data, out, "stage1", max_steps=4)
        assert "changed: numerics.threads" in caplog.text
        assert torch.load(out / "state.pt", weights_only=True)["step"] == 4  # from 0, not from 3
    finally:
        torch.set_num_threads(1)
    caplog.clear()
    train_autoencoder(make_exp(steps=6), data, out, "stage1")  # 1 thread again: the 2-thread state is stale
    assert "changed: numerics.threads" in caplog.text
    state = torch.load(out / "state.pt", weights_only=True)
    assert state["config"]["numerics"] == {"device": "cpu", "threads": 1, "processes": 1,
                                          "torch": torch.__version__.split("+")[0]}
    caplog.clear()
    caplog.set_level(logging.INFO, logger="pvdm")
    train_autoencoder(make_exp(steps=8), data, tmp_path / "resumed", "stage1", max_steps=3)
    train_autoencoder(make_exp(steps=8), data, tmp_path / "resumed", "stage1")
    assert "resuming from" in caplog.text and "another computation" not in caplog.text


# --- non-finite autoencoders ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nan")
    prepare_with_autoencoder(make_exp(), root)
    (root / "ae.pt").rename(root / "good.pt")
    state = torch.load(root / "good.pt", weights_only=True)
    state["model"]["to_pixel.1.weight"][0] = float("nan")
    atomic_torch_save(state, root / "nan.pt")  # as a diverged run would have written it before this check
    return {"root": root, "data": root / "data", "good": root / "good.pt", "nan": root / "nan.pt"}


def test_non_finite_weights_are_neither_read_nor_written(nan_world, tmp_path):
    with pytest.raises(CheckpointError, match=r"nan\.pt: holds non-finite weights .* to_pixel\.1\.weight"):
        load_autoencoder(nan_world["nan"])
    ae = load_autoencoder(nan_world["good"])
    with torch.no_grad():
        ae.to_pixel[1].weight[0, 0] = float("inf")
    with pytest.raises(CheckpointError, match="would hold non-finite weights"):
        save_autoencoder(ae, tmp_path / "best.pt")
    assert not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("command", ["sample", "recon-metrics", "finetune-gan"])
def test_a_nan_autoencoder_stops_every_consumer_with_one_line(nan_world, tmp_path, command):
    exp = json.dumps(make_exp())
    out = tmp_path / "out"
    nan = str(nan_world["nan"])
    if command == "sample":
        unet = tmp_path / "unet.pt"
        from pvdm.checkpoints import save_diffusion
        from pvdm.models.unet import TriplaneUNet
        from pvdm.train.diffusion import unet_config

        save_diffusion(TriplaneUNet(unet_config(make_exp()["diffusion"]["model"], load_autoencoder(nan_world["good"]))),
                       unet)
        run = pvdm("sample", "--settings", exp, "--autoencoder", nan, "--diffusion", str(unet), "--frames", "16",
                   "--out", str(out))
    elif command == "recon-metrics":
        run = pvdm("recon-metrics", "--autoencoder", nan, "--data", str(nan_world["data"]), "--num-videos", "2",
                   "--out", str(out / "recon.json"))
    else:
        run = pvdm("finetune-gan", "--settings", exp, "--data", str(nan_world["data"]), "--init", nan,
                   "--out", str(out))
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"{nan}: holds non-finite weights" in run.stderr
    assert not out.exists()  # nothing created: no shards/, no .lock, no tensorboard/


# --- a multi-process job on SIGTERM ----------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_of_a_two_process_job_exits_75_with_one_line(nan_world, tmp_path):
    exp = json.dumps(make_exp())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pvdm.cli", "--nproc", "2", "train-diffusion", "--settings", exp, "--data",
           str(nan_world["data"]), "--autoencoder", str(nan_world["good"]), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    log = out / "log.jsonl"
    assert wait_until(lambda: log.exists() and log.read_text().count("\n") >= 2, proc, timeout=300), \
        proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)  # what Slurm sends the job's launcher on preemption
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == RESUMABLE_EXIT_CODE, err[-3000:]
    step = torch.load(out / "state.pt", weights_only=True)["step"]
    lines = [line for line in err.splitlines() if "pvdm train-diffusion" in line or "Traceback" in line]
    assert lines == [f"pvdm train-diffusion: stopped by SIGTERM at step {step}; the complete state is saved in "
                     f"{out / 'state.pt'}: rerun the same command to continue from there"], err[-3000:]
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert rerun.returncode == 0 and f"resuming from {out / 'state.pt'} at step {step}" in rerun.stderr


# --- errors before anything is created -------------------------------------------------------------


def test_bad_arguments_fail_in_one_line_before_anything_is_created(nan_world, tmp_path):
    exp = json.dumps(make_exp())
    data, good = str(nan_world["data"]), str(nan_world["good"])
    out = tmp_path / "out"
    cases = {
        "--device gpu: expected cpu, cuda or cuda:K": ["train-autoencoder", "--settings", exp, "--data", data,
                                                       "--device", "gpu", "--out", str(out)],
        "CUDA is not available on this machine": ["train-autoencoder", "--settings", exp, "--data", data,
                                                  "--device", "cuda:0", "--out", str(out)],
        "override 'experiments.x.seed=[1,2': while parsing": ["train-autoencoder", "--config",
                                                              str(REPO / "config" / "config.yaml"), "--data", data,
                                                              "--out", str(out), "experiments.x.seed=[1,2"],
        "argument --num-videos: -3: must be at least 1": ["sample", "--settings", exp, "--autoencoder", good,
                                                          "--diffusion", good, "--frames", "16", "--num-videos",
                                                          "-3", "--out", str(out)],
        "checkpoint not found: ": ["finetune-gan", "--settings", exp, "--data", data, "--init",
                                   str(tmp_path / "missing.pt"), "--out", str(out)],
    }
    if torch.cuda.is_available():
        del cases["CUDA is not available on this machine"]
    for message, args in cases.items():
        run = pvdm(*args)
        assert run.returncode == 2 and message in run.stderr, (message, run.stderr[-2000:])
        # one line (argparse's usage lines come before its own)
        assert "Traceback" not in run.stderr and message in run.stderr.strip().splitlines()[-1], run.stderr
        assert not out.exists(), message  # no shards/, .lock or tensorboard/


def test_interpolations_are_resolved_before_snakemake_validates(tmp_path):
    # `pvdm --config` resolves ${...}; the Snakefile validated the raw string ("'${...}' is not of type
    # 'integer'") before it did the same
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    exp = cfg["experiments"]["tiny"]
    exp["autoencoder"]["model"]["resolution"] = "${experiments.tiny.data.resolution}"
    path = tmp_path / "interp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dry = subprocess.run(snakemake(tmp_path, path, 1, "-n", "--printshellcmds"), capture_output=True, text=True,
                         env=ENV, timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert '"resolution": 32' in dry.stdout and "${" not in dry.stdout
    exp["autoencoder"]["model"]["resolution"] = "${experiments.tiny.data.no_such_key}"
    path.write_text(yaml.safe_dump(cfg))
    bad = subprocess.run(snakemake(tmp_path, path, 1, "-n"), capture_output=True, text=True, env=ENV, timeout=300)
    assert bad.returncode != 0 and "cannot resolve an interpolation" in bad.stdout + bad.stderr


@pytest.mark.slow
def test_an_uneven_batch_over_processes_is_reported_once(nan_world, tmp_path):
    exp = make_exp()
    exp["autoencoder"]["stage1"]["batch_size"] = 4
    run = pvdm("--nproc", "3", "train-autoencoder", "--settings", json.dumps(exp), "--data", str(nan_world["data"]),
               "--out", str(tmp_path / "out"))
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.count("does not split over 3 processes") == 1 and "Traceback" not in run.stderr


# --- the DAG -----------------------------------------------------------------------------------------


def dag_config(path: Path, **changes: float) -> Path:
    """tests/data/tiny.yaml with more steps (kills land in training), no long videos or baseline."""
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    exp = cfg["experiments"]["tiny"]
    exp["diffusion"]["train"].update(steps=12, save_every=3)
    exp["sampling"].update(long_videos=0, untrained_baseline=False)
    exp["autoencoder"]["stage1"]["lr"] = changes.get("stage1_lr", exp["autoencoder"]["stage1"]["lr"])
    exp["diffusion"]["train"]["lr"] = changes.get("diffusion_lr", exp["diffusion"]["train"]["lr"])
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(workdir: Path, cfg: Path, cores: int = 2, *extra: str) -> list[str]:
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", str(cores),
            *extra, "--configfile", str(cfg)]


def run_dag(workdir: Path, cfg: Path, cores: int = 2) -> subprocess.CompletedProcess:
    run = subprocess.run(snakemake(workdir, cfg, cores), capture_output=True, text=True, env=ENV, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished_dag(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dag")
    cfg = dag_config(root / "tiny.yaml")
    run_dag(root / "two", cfg, cores=2)
    return {"root": root, "cfg": cfg, "work": root / "two"}


@pytest.mark.slow
def test_results_do_not_depend_on_cores(finished_dag):
    one = finished_dag["root"] / "one"
    run_dag(one, finished_dag["cfg"], cores=1)
    compared, mismatches = compare_runs(finished_dag["work"] / "results", one / "results")
    assert compared >= 10 and mismatches == []


@pytest.mark.slow
def test_a_changed_setting_then_a_killed_rerun_gives_fresh_weights_samples_and_metrics(finished_dag):
    work, root = finished_dag["work"], finished_dag["root"]
    res = work / "results" / "tiny"
    files = ["autoencoder/gan/model.pt", "diffusion/ema.pt", "metrics/fvd16_model.json", "metrics/recon.json"]
    before = {f: digest(res / f) for f in files}
    fvd_before = json.loads((res / "metrics/fvd16_model.json").read_text())["value"]

    # 1. stage 1's learning rate changes: every stage after it recomputes (none "resumes" its old state)
    changed = dag_config(root / "lr.yaml", stage1_lr=5e-4)
    run_dag(work, changed)
    after = {f: digest(res / f) for f in files}
    assert all(before[f] != after[f] for f in files), (before, after)
    assert json.loads((res / "metrics/fvd16_model.json").read_text())["value"] != fvd_before
    for rule in ("train_autoencoder", "finetune_gan", "train_diffusion"):
        assert "resuming from" not in (res / "logs" / f"{rule}.log").read_text(), rule

    # 2. the U-Net's learning rate changes and its training is killed: the rerun is not "nothing to do"
    changed = dag_config(root / "lr2.yaml", stage1_lr=5e-4, diffusion_lr=5e-4)
    proc = subprocess.Popen(snakemake(work, changed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    pids = wait_until(lambda: job_pids(work, "train-diffusion"), proc, timeout=600)
    assert pids, "the diffusion job never started"
    time.sleep(2.0)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=600)
    assert proc.returncode != 0 and not (res / "diffusion" / "ema.pt").exists()
    dry = subprocess.run(snakemake(work, changed, 2, "-n"), capture_output=True, text=True, env=ENV)
    assert "train_diffusion" in dry.stdout and "gather_samples" in dry.stdout, dry.stdout[-3000:]
    run_dag(work, changed)
    card = json.loads((res / "samples" / "model16" / "samples.json").read_text())
    assert card["diffusion_sha256"] == sha256_file(res / "diffusion" / "ema.pt") != after["diffusion/ema.pt"]
    fvd = res / "metrics" / "fvd16_model.json"
    assert digest(fvd) != after["metrics/fvd16_model.json"]
    assert fvd.stat().st_mtime >= (res / "diffusion" / "ema.pt").stat().st_mtime
    assert (work / "results" / "paper" / "table1.json").stat().st_mtime >= fvd.stat().st_mtime
