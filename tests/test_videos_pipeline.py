"""Your own videos end to end on real footage: `pvdm init --videos DIR` -> the config it writes
(at the tiny CI sizes) -> `snakemake` prepare -> train -> sample -> FVD, and the manifest it leaves."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import DATA, REPO, VIDEOS

from pvdm.eval.records import FVDRecord
from pvdm.utils.io import read_json

BIN = Path(sys.executable).parent
SHARED_VIDEOS = REPO.parent / "shared" / "data" / "real-videos"
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.skipif(not SHARED_VIDEOS.is_dir(), reason=f"{SHARED_VIDEOS} (the four real test videos) is absent")
def test_own_videos_whole_dag(tmp_path):
    mine = tmp_path / "mine"
    shutil.copytree(SHARED_VIDEOS, mine / "shared", ignore=shutil.ignore_patterns("*.md"))
    shutil.copytree(VIDEOS, mine / "local")
    (mine / "local" / "readme.txt").write_text("not a video")
    cfg = tmp_path / "my.yaml"
    init = run([str(BIN / "pvdm"), "init", "--videos", str(mine), "--out", str(cfg), "--exp", "mine"], tmp_path)
    assert "8 inputs: 5 usable" in init.stdout and "2 duplicates" in init.stdout and "| train_autoencoder |" in init.stdout
    written = cfg.read_text()
    assert "# paper: 256" in written and "resolution: 32" in written

    # The written experiment at the tiny CI sizes (tests/data/tiny.yaml); data settings as written.
    config = yaml.safe_load(written)
    exp, tiny = config["experiments"]["mine"], yaml.safe_load((DATA / "tiny.yaml").read_text())["experiments"]["tiny"]
    for section in ("autoencoder", "diffusion"):
        exp[section] = tiny[section]
    n = exp["eval"]["fvd_videos"]
    exp["sampling"] = {**tiny["sampling"], "num_videos": n, "long_videos": 0}
    exp["eval"] = {**tiny["eval"], "fvd_videos": n, "recon_videos": exp["eval"]["recon_videos"]}
    exp["data"] |= {"clips_per_video": 1, "workers": 1}
    cfg.write_text(yaml.safe_dump(config))
    snakemake = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--cores", "2",
                 "results/mine/metrics/fvd16_model.json", "--configfile", str(cfg)]
    run(snakemake, tmp_path)

    manifest = read_json(tmp_path / "results/mine/data/manifest.json")
    rows = {r["path"]: r for r in manifest["files"]}
    assert len(rows) == 8 and manifest["counts"]["duplicate"] == 2
    assert rows["shared/carphone_pristine.mp4"]["reason"] == "same content as local/carphone.mp4"
    assert rows["shared/tree.avi"]["reason"] == "same content as local/tree.avi"
    assert rows["local/bikes_small.mp4"]["reason"] == "no shot of 32 frames (longest 30 of 2 shots)"
    used = [r for r in rows.values() if r["status"] == "used"]
    assert len(used) == 5 and manifest["counts"]["train_videos"] + manifest["counts"]["test_videos"] == 5
    assert len(rows["shared/bikes.mp4"]["shots"]) >= 3  # scene cuts in the real clip
    assert rows["shared/vtest.avi"]["frames"] == 795 and rows["shared/vtest.avi"]["shots"] == [[0, 795]]
    sides: dict[str, set] = {}
    for r in used:
        sides.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values()) and {"train", "test"} <= set().union(*sides.values())
    fvd = FVDRecord.read(tmp_path / "results/mine/metrics/fvd16_model.json")
    assert fvd.protocol["dataset"] == "videos:" + manifest["dataset_files_sha256"][:16]
    assert fvd.protocol["num_real"] == n == manifest["counts"]["train_videos"] and fvd.value > 0

    # The DAG's inputs are the listed files: nothing to do again, but a new video reruns the data stage.
    assert "Nothing to be done" in run([*snakemake, "-n"], tmp_path).stdout
    (mine / "new").mkdir()
    shutil.copy(VIDEOS / "vtest_small.avi", mine / "new" / "street.avi")
    assert "prepare_data" in run([*snakemake, "-n"], tmp_path).stdout
