"""The whole DAG on a tiny experiment: every stage runs, the default target ends in the paper table,
a rerun does nothing, a sampling change resamples without retraining, the report builds; and the
released-checkpoint path (original-format files -> import -> sample -> FVD -> table row)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA, REPO, TINY_AE, make_c3d_archives

from pvdm.checkpoints import save_autoencoder, save_diffusion
from pvdm.eval.records import FVDRecord, ISRecord, ReconRecord
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
from pvdm.models.unet import TriplaneUNet, UNetConfig

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=workdir, timeout=1200)


def jobs_planned(out: str) -> dict[str, int]:
    block = out.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in out else ""
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", block, re.M) if m[0] != "total"}


def test_full_pipeline_tiny(tmp_path):
    # The Inception Score runs through the DAG on archives of random C3D weights in the real layout.
    tiny = yaml.safe_load((DATA / "tiny.yaml").read_text())
    tiny["experiments"]["tiny"]["eval"].update(c3d_dir=str(make_c3d_archives(tmp_path)), is_splits=2)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    run = snakemake(tmp_path, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-4000:]
    res = tmp_path / "results"
    table = (res / "paper" / "table1.md").read_text()
    assert "Tiny (CI)" in table and "untrained U-Net" in table and "real vs real" in table
    assert "| IS |" in table and "Inception Score, isv2048_ucf (StyleGAN-V) / TGANv2 C3D: N=4" in table
    # The machine-readable table (`dvc metrics`) holds exactly the numbers of the metric files.
    rows = json.loads((res / "paper" / "table1.json").read_text())["rows"]
    assert list(rows) == ["tiny", "tiny_untrained", "tiny_floor"]
    assert rows["tiny"]["status"] == rows["tiny_untrained"]["status"] == "ok"
    assert rows["tiny_floor"]["status"] == "fvd128 floor missing"  # 2 long videos: no two halves of >= 2
    metrics = res / "tiny" / "metrics"
    fvd16, fvd48 = FVDRecord.read(metrics / "fvd16_model.json"), FVDRecord.read(metrics / "fvd48_model.json")
    recon = ReconRecord.read(metrics / "recon.json")
    assert rows["tiny"]["fvd16"] == fvd16.value and [rows["tiny"]["fvd16_lo"], rows["tiny"]["fvd16_hi"]] == list(fvd16.interval95)
    assert rows["tiny"]["fvd128"] == fvd48.value and rows["tiny"]["psnr"] == recon.psnr and rows["tiny"]["rfvd"] == recon.rfvd.value
    assert rows["tiny_untrained"]["fvd16"] == FVDRecord.read(metrics / "fvd16_untrained.json").value
    assert rows["tiny_floor"]["fvd16"] == fvd16.real_floor.value and fvd16.real_floor.n == 2
    assert fvd16.value > 0 and recon.num_videos == 4
    # recon.json scores the GAN stage's chosen model on the held-out clips its evaluations used: the best
    # evaluation's PSNR, never below the stage's own starting point (best-model selection keeps it)
    history = json.loads((res / "tiny" / "autoencoder" / "gan" / "history.json").read_text())
    best = next(e for e in history["evaluations"] if e["step"] == history["best_step"])
    assert recon.psnr == pytest.approx(best["psnr"], rel=1e-4) and recon.psnr >= history["evaluations"][0]["psnr"]
    card = fvd16.protocol
    assert card["num_fake"] == 4 and card["frames"] == 16 and len(card["i3d_weights_sha256"]) == 64
    assert card["sampler"] == "ddim3_eta1" and card["ema"] is True  # from the samples' card
    assert fvd16.interval["method"] == "fixed_n" and fvd16.interval95[0] < fvd16.value < fvd16.interval95[1]
    score = ISRecord.read(metrics / "is16_model.json")
    assert rows["tiny"]["is"] == score.value and score.num_videos == 4 and score.splits == 2
    # the DAG's IS is the score of the model's sample clips with those archives (not of other clips or N)
    from pvdm.data.store import ClipStore
    from pvdm.eval.inception import evaluate_is

    direct = evaluate_is(ClipStore(res / "tiny" / "samples" / "model16" / "clips").clips, num_videos=4, frames=16,
                         splits=2, device="cpu", archives_dir=tiny["experiments"]["tiny"]["eval"]["c3d_dir"])
    assert score.value == pytest.approx(direct.value, rel=1e-4) and score.std == pytest.approx(direct.std, rel=1e-3)
    assert [e["step"] for e in history["evaluations"]][:2] == [0, 1] and history["stopped_at"] <= 3
    for fig in ("autoencoder", "diffusion", "samples"):
        assert (res / "paper" / "figures" / f"tiny_{fig}_16.png").stat().st_size > 1000
    assert (res / "tiny" / "samples" / "model48" / "preview.gif").is_file()

    again = snakemake(tmp_path, "--configfile", str(cfg))
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # a sampling change resamples and re-evaluates, and retrains nothing
    changed = yaml.safe_load(cfg.read_text())
    changed["experiments"]["tiny"]["sampling"]["sampler"]["steps"] = 4
    cfg.write_text(yaml.safe_dump(changed))
    dry = snakemake(tmp_path, "--configfile", str(cfg), "-n")
    planned = jobs_planned(dry.stdout)
    assert planned.get("sample") and planned.get("eval_fvd") and planned.get("paper_table"), dry.stdout[
        -3000:
    ]
    assert not {"prepare_data", "train_autoencoder", "finetune_gan", "train_diffusion"} & set(planned)

    report = snakemake(tmp_path, "--configfile", str(cfg), "--report", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report.html").stat().st_size > 10_000


def test_released_checkpoints_flow(tmp_path):
    """Small checkpoints in the original format stand in for the released PVDM files."""
    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(**{**TINY_AE, "frames": 16})
    unet_model = {
        "model_channels": 32,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [2],
        "num_heads": 2,
    }
    (tmp_path / "ckpt").mkdir()
    save_autoencoder(TriplaneAutoencoder(ae_cfg), tmp_path / "ckpt" / "ae.pth", original_format=True)
    unet = TriplaneUNet(
        UNetConfig(
            **unet_model,
            in_channels=ae_cfg.embed_dim,
            latent_side=ae_cfg.latent_side,
            latent_frames=ae_cfg.frames,
        )
    )
    save_diffusion(unet, tmp_path / "ckpt" / "ddpm.pth", original_format=True)
    tiny = yaml.safe_load((DATA / "tiny.yaml").read_text())["experiments"]["tiny"]
    exp = {
        "label": "Released (stand-in)",
        "paper_variant": "PVDM-L 400/400-s",
        "seed": 0,
        "released": {
            "autoencoder": "ckpt/ae.pth",
            "diffusion": "ckpt/ddpm.pth",
            "autoencoder_config": ae_cfg.to_dict(),
            "diffusion_config": unet_model,
        },
        "data": tiny["data"],
        "sampling": {**tiny["sampling"], "long_videos": 0},
        "eval": tiny["eval"],
    }
    cfg = tmp_path / "released.yaml"
    cfg.write_text(yaml.safe_dump({"experiments": {"rel": exp}}))
    run = snakemake(tmp_path, "--configfile", str(cfg))
    assert run.returncode == 0, run.stderr[-4000:]
    imported = json.loads((tmp_path / "results" / "rel" / "released" / "import.json").read_text())
    assert imported["autoencoder"]["source"] == "ckpt/ae.pth"
    table = (tmp_path / "results" / "paper" / "table1.md").read_text()
    assert "Released (stand-in)" in table and "PVDM-L 400/400-s" in table
    # the row's numbers come from the imported checkpoints, sampled and scored with the config's protocol
    card = json.loads((tmp_path / "results" / "rel" / "samples" / "model16" / "samples.json").read_text())
    assert card["autoencoder"] == "results/rel/released/autoencoder.pt" and card["weights"] == "ema"
    assert card["diffusion"] == "results/rel/released/diffusion.pt" and card["num_videos"] == 4
    fvd = FVDRecord.read(tmp_path / "results" / "rel" / "metrics" / "fvd16_model.json")
    assert fvd.protocol["num_fake"] == fvd.protocol["num_real"] == 4 and fvd.protocol["frames"] == 16
    assert fvd.protocol["sampler"] == "ddim3_eta1" and fvd.protocol["ema"] is True
    rows = json.loads((tmp_path / "results" / "paper" / "table1.json").read_text())["rows"]
    assert rows["rel"]["fvd16"] == fvd.value
    # (the paper's numbers sit beside rows of ucf101 / sky; their matching is tested in test_report)
    assert not (tmp_path / "results" / "rel" / "autoencoder").exists()  # nothing was trained
