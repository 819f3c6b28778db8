"""The DVC layer: `pvdm publish` / `pvdm pull-metrics`, dvc.yaml (repro, metrics, plots), and the
"paper table from published metrics" path: a fresh clone that pulls only the metric files runs exactly
one Snakemake job (paper_table) and trains nothing.

The end-to-end test builds a git + DVC repository in tmp_path from a copy of the project's workflow
files, with a local directory as the DVC remote (fully offline).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pvdm.config import load_config
from pvdm.dag import ExperimentDag
from pvdm.report.commands import register_publish
from pvdm.report.publish import (
    DvcError,
    check_dvc_repo,
    loss_curve,
    plan_publish,
    write_loss_csv,
)

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "report"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str | None:
    return str(BIN / name) if (BIN / name).is_file() else shutil.which(name)


def pvdm(*args: str) -> None:
    """`pvdm <args>` in-process, through the same registration that pvdm/cli.py uses."""
    parser = argparse.ArgumentParser(prog="pvdm")
    register_publish(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(list(args))
    ns.func(ns)


def run(*cmd: str, cwd: Path) -> str:
    p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def job_counts(snakemake_output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry run, as {rule: count} (without 'total')."""
    lines = snakemake_output.splitlines()
    start = lines.index("Job stats:") + 3  # header, column names, dashes
    counts = {}
    for line in lines[start:]:
        if not line.strip():
            break
        rule, count = line.split()
        counts[rule] = int(count)
    counts.pop("total")
    return counts


def mnist_config() -> dict:
    return load_config(REPO / "config" / "config.yaml")


# --- fast: what gets published, loss curves, errors -----------------------------------------------


def test_checkpoint_paths_follow_the_config() -> None:
    cfg = mnist_config()
    exp = next(iter(cfg["experiments"]))
    c = cfg["experiments"][exp]
    # The sample rule reads the GAN autoencoder and the EMA U-Net; the untrained baseline its init.
    assert ExperimentDag(exp, c).checkpoints_to_publish() == [
        f"results/{exp}/autoencoder/gan/model.pt",
        f"results/{exp}/diffusion/ema.pt",
        f"results/{exp}/diffusion/untrained.pt",
    ]
    c["sampling"]["ema"], c["sampling"]["untrained_baseline"] = False, False
    assert ExperimentDag(exp, c).checkpoints_to_publish() == [f"results/{exp}/autoencoder/gan/model.pt", f"results/{exp}/diffusion/model.pt"]
    released = load_config(REPO / "config" / "released_sky.yaml")["experiments"]["sky_released"]
    assert ExperimentDag("sky_released", released).checkpoints_to_publish() == [
        "results/sky_released/released/autoencoder.pt",
        "results/sky_released/released/diffusion.pt",
    ]


def test_loss_curve_keeps_the_latest_line_of_a_step_and_skips_eval_rows(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    rows = [
        {"step": 0, "eval/psnr": 13.8},
        {"step": 5, "g/total": 10.5, "d/total": 1.8},
        {"step": 10, "g/total": 8.25},
        {"step": 5, "g/total": 9.5},  # resumed run logs step 5 again
        {"step": 15, "g/total": 7.0},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    assert loss_curve(log, "g/total") == [(5, 9.5), (10, 8.25), (15, 7.0)]
    out = tmp_path / "plots" / "x.csv"
    assert write_loss_csv(log, "g/total", out) == 3
    assert out.read_text() == "step,loss\n5,9.5\n10,8.25\n15,7.0\n"
    with pytest.raises(ValueError, match="no 'loss' values"):
        loss_curve(log, "loss")
    log.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON line"):
        loss_curve(log, "loss")


def test_plan_names_missing_and_malformed_files(tmp_path: Path) -> None:
    cfg = mnist_config()
    exp = next(iter(cfg["experiments"]))
    with pytest.raises(DvcError, match="not a DVC repository"):
        check_dvc_repo(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"results/{exp}/metrics/: no metric JSON files"):
        plan_publish(tmp_path, cfg, [exp], ["metrics"])
    with pytest.raises(FileNotFoundError, match=f"results/{exp}/autoencoder/gan/model.pt"):
        plan_publish(tmp_path, cfg, [exp], ["checkpoints"])
    with pytest.raises(FileNotFoundError, match="no raw data to publish: none of results/raw/moving_mnist/"):
        plan_publish(tmp_path, cfg, [exp], ["raw"])
    metrics = tmp_path / "results" / exp / "metrics"
    metrics.mkdir(parents=True)
    shutil.copy(FIXTURES / "ucf_ours_recon.json", metrics / "recon.json")
    (metrics / "fvd16_model.json").write_text('{"value": 1')
    with pytest.raises(ValueError, match=f"results/{exp}/metrics/fvd16_model.json: not valid JSON"):
        plan_publish(tmp_path, cfg, [exp], ["metrics"])
    shutil.copy(FIXTURES / "mnist_untrained_fvd16.json", metrics / "fvd16_model.json")
    (metrics / "feature_cache").mkdir()  # FVD feature caches are not published
    plan = plan_publish(tmp_path, cfg, [exp], ["metrics"])
    assert plan.add == [f"results/{exp}/metrics/fvd16_model.json", f"results/{exp}/metrics/recon.json"]
    assert not plan.commit_stage and not plan.plots
    # Default mode: raw data (none for Moving MNIST) and logs are optional, checkpoints are not.
    with pytest.raises(FileNotFoundError, match="diffusion/ema.pt"):
        plan_publish(tmp_path, cfg, [exp], ["raw", "checkpoints", "metrics", "plots"], explicit=False)
    with pytest.raises(ValueError, match="not in the config"):
        pvdm("publish", "--repo", str(tmp_path), "--config", str(REPO / "config" / "config.yaml"), "--exp", "nope")


def test_project_is_a_quiet_dvc_repository() -> None:
    config = (REPO / ".dvc" / "config").read_text()
    assert "analytics = false" in config and "check_update = false" in config
    assert "out_dir = results/paper/dvc_plots" in config
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["paper"]
    assert stage["cmd"].startswith("snakemake ") and stage["cmd"].endswith(" results/paper/table1.md")
    assert all(next(iter(o.values()))["persist"] for o in stage["outs"])


# --- slow: publish -> clone -> pull metrics -> one job --------------------------------------------


def make_origin(path: Path) -> str:
    """A git + DVC repository holding the project's workflow and a one-experiment config ('tiny')."""
    path.mkdir()
    for name in ("Snakefile", "dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, path / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("workflow", "profiles", "pvdm", "config/paper"):
        shutil.copytree(REPO / name, path / name, ignore=ignore)
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    exp = next(iter(raw["experiments"].values()))
    tiny = {key: value for key, value in raw.items() if key != "targets"} | {"experiments": {"tiny": exp}}
    (path / "config" / "config.yaml").write_text(yaml.safe_dump(tiny))
    run("git", "init", "-q", "-b", "main", cwd=path)
    run("git", "add", "-A", cwd=path)
    run("git", "commit", "-q", "-m", "workflow", cwd=path)
    return "tiny"


def write_metrics(repo: Path, exp: str) -> dict[str, Path]:
    """Fixture metric files wherever Snakemake's paper_table expects this experiment's metrics."""
    summary = run(_tool("snakemake"), "--summary", "results/paper/table1.md", cwd=repo)
    wanted = sorted({line.split("\t")[0] for line in summary.splitlines()
                     if line.startswith(f"results/{exp}/metrics/") and line.split("\t")[0].endswith(".json")})
    assert f"results/{exp}/metrics/recon.json" in wanted and len(wanted) >= 2, summary
    sources = {}
    for rel in wanted:
        name = Path(rel).name
        src = ("ucf_ours_recon.json" if name == "recon.json"
               else "mnist_untrained_fvd16.json" if name.startswith("fvd16_") else "ucf_ours_fvd128.json")
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / src, repo / rel)
        sources[rel] = FIXTURES / src
    return sources


@pytest.mark.slow
@pytest.mark.skipif(any(_tool(t) is None for t in ("dvc", "git", "snakemake")), reason="needs dvc, git, snakemake")
def test_publish_clone_pull_metrics_rebuilds_only_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"GIT_AUTHOR_NAME": "pvdm test", "GIT_AUTHOR_EMAIL": "test@example.org",
                       "GIT_COMMITTER_NAME": "pvdm test", "GIT_COMMITTER_EMAIL": "test@example.org",
                       "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "DVC_NO_ANALYTICS": "1",
                       "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}.items():
        monkeypatch.setenv(key, value)
    dvc, snakemake = _tool("dvc"), _tool("snakemake")
    origin, clone, remote = tmp_path / "origin", tmp_path / "clone", tmp_path / "remote"
    exp = make_origin(origin)
    # table1.json is `cache: false`: git must hold it, or `dvc metrics diff` has nothing to compare.
    ignored = subprocess.run(["git", "check-ignore", "-q", "results/paper/table1.json"], cwd=origin).returncode == 0
    assert not ignored, "add `!/results/paper/table1.json` to .gitignore"
    sources = write_metrics(origin, exp)
    logs = {"diffusion/log.jsonl": [{"step": 10, "loss": 0.9}, {"step": 20, "loss": 0.5}, {"step": 30, "loss": 0.25}],
            "autoencoder/gan/log.jsonl": [{"step": 0, "eval/psnr": 14.0}, {"step": 5, "g/total": 3.5}]}
    for rel, rows in logs.items():
        (origin / "results" / exp / rel).parent.mkdir(parents=True, exist_ok=True)
        (origin / "results" / exp / rel).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ckpts = ExperimentDag(exp, load_config(origin / "config" / "config.yaml")["experiments"][exp]).checkpoints_to_publish()
    for i, rel in enumerate(ckpts):  # stand-ins: DVC and Snakemake never read a checkpoint's bytes
        (origin / rel).parent.mkdir(parents=True, exist_ok=True)
        (origin / rel).write_bytes(bytes([i]) * 1000)
    mtimes = {rel: (origin / rel).stat().st_mtime_ns for rel in [*sources, *ckpts]}

    # Publish: the metrics (pushed to a local remote), then the checkpoints and loss curves.
    pvdm("publish", "--repo", str(origin), "--metrics-only", "--push", "--remote", "local", str(remote), "--git-add")
    assert any(f.is_file() for f in remote.rglob("*")), "nothing was pushed"
    pvdm("publish", "--repo", str(origin), "--checkpoints", "--plots", "--push", "--git-add")
    for rel, mtime in mtimes.items():
        assert (origin / f"{rel}.dvc").is_file()
        assert (origin / rel).stat().st_mtime_ns == mtime, f"{rel}: publishing changed its mtime"
    assert (origin / f"results/paper/plots/{exp}_diffusion_loss.csv").read_text() == "step,loss\n10,0.9\n20,0.5\n30,0.25\n"
    assert (origin / f"results/paper/plots/{exp}_autoencoder_gan_loss.csv").read_text() == "step,loss\n5,3.5\n"
    staged = run("git", "diff", "--cached", "--name-only", cwd=origin).split()
    pointers = {f"{rel}.dvc" for rel in mtimes} | {".dvc/config", "results/paper/plots.dvc"}
    # DVC git-ignores the plots folder in results/paper/.gitignore (folders under results/ are not ignored).
    assert pointers <= set(staged) <= pointers | {"results/paper/.gitignore"}, staged
    run("git", "commit", "-q", "-m", "publish", cwd=origin)

    # A fresh clone pulls only the metrics: Snakemake plans exactly one job and trains nothing.
    run("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    pvdm("pull-metrics", "--repo", str(clone))
    for rel, src in sources.items():
        assert (clone / rel).read_bytes() == src.read_bytes()
    assert not any((clone / rel).exists() for rel in ckpts)
    dry = run(snakemake, "-n", "results/paper/table1.md", cwd=clone)
    assert job_counts(dry) == {"paper_table": 1}, dry
    out = run(snakemake, "--cores", "1", "results/paper/table1.md", cwd=clone)
    assert job_counts(out) == {"paper_table": 1}
    assert (clone / "results/paper/table1.md").is_file()
    made = [p for p in (clone / "results" / exp).rglob("*") if p.is_file() and p.suffix != ".dvc"]
    assert sorted(str(p.relative_to(clone)) for p in made) == sorted(sources), "something was rebuilt"
    fvd16 = json.loads((FIXTURES / "mnist_untrained_fvd16.json").read_text())["value"]
    assert json.loads((clone / "results/paper/table1.json").read_text())["rows"][exp]["fvd16"] == fvd16

    # dvc.yaml: metrics show; repro (persist: DVC keeps the outputs, so Snakemake finds nothing to do);
    # publishing the table commits the stage; metrics diff against that commit; plots show.
    shown = json.loads(run(dvc, "metrics", "show", "--json", cwd=clone))
    assert shown[""]["data"]["results/paper/table1.json"]["data"]["rows"][exp]["fvd16"] == fvd16
    assert "Nothing to be done" in run(dvc, "repro", cwd=clone)
    pvdm("publish", "--repo", str(clone), "--table", "--git-add")
    assert sorted(run("git", "diff", "--cached", "--name-only", cwd=clone).split()) == [
        "dvc.lock", "results/paper/table1.json"]
    assert "up to date" in run(dvc, "status", "paper", cwd=clone)
    run("git", "commit", "-q", "-m", "table", cwd=clone)
    metric = clone / f"results/{exp}/metrics/fvd16_model.json"
    card = json.loads(metric.read_text())
    card["value"] = fvd16 + 100.0
    metric.write_text(json.dumps(card))
    run(dvc, "repro", "--force", "paper", cwd=clone)
    diff = json.loads(run(dvc, "metrics", "diff", "--json", cwd=clone))
    change = diff["results/paper/table1.json"][f"rows.{exp}.fvd16"]
    assert change["old"] == fvd16 and change["new"] == pytest.approx(fvd16 + 100.0)
    run(dvc, "pull", "results/paper/plots.dvc", cwd=clone)
    plots = json.loads(run(dvc, "plots", "show", "--json", cwd=clone))
    values = plots["data"][f"results/paper/plots/{exp}_diffusion_loss.csv"][0]["content"]["data"]["values"]
    assert [(float(v["step"]), float(v["loss"])) for v in values] == [(10, 0.9), (20, 0.5), (30, 0.25)]
    run(dvc, "plots", "show", cwd=clone)
    assert (clone / "results/paper/dvc_plots/index.html").is_file()  # plots.out_dir: git-ignored, under results/

    # Pulled checkpoints get fresh mtimes in no particular order; an autoencoder newer than the U-Net
    # would retrain the diffusion model. `snakemake --touch` on the checkpoints restores the order.
    run(dvc, "pull", *[f"{rel}.dvc" for rel in ckpts], cwd=clone)
    now = (clone / ckpts[0]).stat().st_mtime
    os.utime(clone / ckpts[0], (now + 10, now + 10))  # the autoencoder arrived last
    frames = yaml.safe_load((clone / "config" / "config.yaml").read_text())["experiments"][exp]["autoencoder"]["model"]["frames"]
    target = f"results/{exp}/samples/model{frames}/samples.json"
    assert "train_diffusion" in job_counts(run(snakemake, "-n", target, cwd=clone))
    run(snakemake, "--touch", "--cores", "1", *ckpts[1:], cwd=clone)
    # only sampling reruns (its shards are temporary): one shard job and the gather for this config
    assert job_counts(run(snakemake, "-n", target, cwd=clone)) == {"sample": 1, "gather_samples": 1}
