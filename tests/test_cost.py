"""`pvdm plan`'s cost model (pvdm.report.cost) on hand-computed cases: rates apply only at the per-GPU
batch the config runs (global batch / GPUs), GPU-hours = GPUs x wall time, published figures only
where nothing was measured, files not measured on a GPU refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pvdm.config import load_config
from pvdm.report.cost import plan_costs, to_markdown

REPO = Path(__file__).resolve().parents[1]
ON = {"gpu": "H200", "torch": "2.14", "date": "2026-11-30"}


def plan(tmp_path: Path, rates: dict, *overrides: str) -> dict[tuple[str, str], object]:
    cfg = load_config(REPO / "config" / "ucf101.yaml", overrides)
    (tmp_path / "t.json").write_text(json.dumps({"valid_for_planning": True, "measured_on": ON, "rates": rates}))
    costs, on = plan_costs(cfg, tmp_path / "t.json")
    assert "H200" in on
    return {(c.rule, c.basis.split(":")[0] if c.rule in ("sample", "eval_fvd") else ""): c for c in costs}


def test_config_values_the_hand_computed_cases_use():
    e = load_config(REPO / "config" / "ucf101.yaml")["experiments"]["ucf101"]
    s1, gan, unet = e["autoencoder"]["stage1"], e["autoencoder"]["gan"], e["diffusion"]["train"]
    assert (s1["steps"], s1["batch_size"], s1["grad_accum"]) == (250_000, 8, 3)
    assert (gan["steps"], gan["batch_size"], gan["grad_accum"]) == (30_000, 8, 3)
    assert (unet["steps"], unet["batch_size"], e["sampling"]["batch_size"]) == (850_000, 64, 32)
    assert e["resources"]["train_autoencoder"]["gpus"] == e["resources"]["train_diffusion"]["gpus"] == 8


def test_training_hours_at_the_per_gpu_batch(tmp_path):
    rates = {"ae_train_clips_per_s": {"value": 10.0, "per_gpu_batch": 1},
             "gan_train_clips_per_s": {"value": 4.0, "per_gpu_batch": 1},
             "unet_train_samples_per_s": [{"value": 200.0, "per_gpu_batch": 64},  # the global batch: not used
                                          {"value": 12.5, "per_gpu_batch": 8}]}
    rows = plan(tmp_path, rates)
    # 8 GPUs x (250,000 steps x 1 clip x 3 micro-batches / 10 clips/s) = 8 x 75,000 s
    assert rows[("train_autoencoder", "")].gpu_hours == pytest.approx(8 * 75_000 / 3600)
    # 8 GPUs x (30,000 x 1 x 3 / 4) = 8 x 22,500 s
    assert rows[("finetune_gan", "")].gpu_hours == pytest.approx(8 * 22_500 / 3600)
    # 8 GPUs x (850,000 steps x 8 samples / 12.5) = 8 x 544,000 s (the rate at batch 64 would give 1/16 of it)
    unet = rows[("train_diffusion", "")]
    assert unet.gpu_hours == pytest.approx(8 * 544_000 / 3600) and "8 per GPU" in unet.basis


def test_other_gpu_counts_need_their_own_per_gpu_batch(tmp_path):
    rates = {"ae_train_clips_per_s": [{"value": 10.0, "per_gpu_batch": 1}, {"value": 16.0, "per_gpu_batch": 2}],
             "unet_train_samples_per_s": {"value": 12.5, "per_gpu_batch": 8}}
    rows = plan(tmp_path, rates, "experiments.ucf101.resources.train_autoencoder.gpus=4",
                "experiments.ucf101.resources.train_diffusion.gpus=4")
    # 4 GPUs x 2 clips each: 4 x (250,000 x 2 x 3 / 16) = 4 x 93,750 s
    assert rows[("train_autoencoder", "")].gpu_hours == pytest.approx(4 * 93_750 / 3600)
    unet = rows[("train_diffusion", "")]  # 16 samples per GPU: only batch 8 was measured
    assert unet.gpu_hours is None and "measured at per-GPU batch 8, not 16: not measured" in unet.basis


def test_sampling_and_i3d_rows(tmp_path):
    rates = {"sample_s_per_clip": {"value": 4.0, "per_gpu_batch": 32}, "i3d_16f_clips_per_s": {"value": 320.0}}
    rows = plan(tmp_path, rates)
    # 2,048 videos x 1 clip x 4 s (400 steps) and 2,048 x 8 clips
    assert rows[("sample", "model16")].gpu_hours == pytest.approx(2048 * 4.0 / 3600)
    assert rows[("sample", "model128")].gpu_hours == pytest.approx(2048 * 8 * 4.0 / 3600)
    assert rows[("sample", "model16")].jobs == 16 and rows[("sample", "model16")].gpus_per_job == 1
    assert rows[("eval_fvd", "fvd16_model")].gpu_hours == pytest.approx(2 * 2048 / 320 / 3600)
    # A sampling rate at another batch is not this config's: the paper's figure stands in, marked as such.
    rows = plan(tmp_path, {"sample_s_per_clip": {"value": 4.0, "per_gpu_batch": 8}})
    assert rows[("sample", "model16")].gpu_hours == pytest.approx(2048 * 20.4 / 3600)
    assert "published figure" in rows[("sample", "model16")].basis


def test_nothing_measured_and_files_not_for_planning(tmp_path):
    cfg = load_config(REPO / "config" / "ucf101.yaml")
    costs, on = plan_costs(cfg, tmp_path / "absent.json")  # no measurement: the paper's sampling figure only
    train = next(c for c in costs if c.rule == "train_diffusion")
    assert train.gpu_hours is None and train.gpus_per_job == 8 and "not measured" in to_markdown(costs, on)
    # A rate without its per-GPU batch (the old global-batch files) is not used for training.
    rows = plan(tmp_path, {"unet_train_samples_per_s": {"value": 100.0}})
    assert rows[("train_diffusion", "")].gpu_hours is None
    (tmp_path / "t.json").write_text(json.dumps({"valid_for_planning": False, "rates": {}}))
    with pytest.raises(ValueError, match="not measured at paper scale on a GPU"):
        plan_costs(cfg, tmp_path / "t.json")


def test_plan_prices_each_sampler_by_network_evaluations(tmp_path):
    from pvdm.report.cost import sampler_choices, sampler_markdown

    cfg = load_config(REPO / "config" / "ucf101.yaml", ["experiments.ucf101.sampling.sampler.name=dpmpp2m",
                                                        "experiments.ucf101.sampling.sampler.steps=15"])
    choices, _ = sampler_choices(cfg, tmp_path / "absent.json")  # the paper's 20.4 s per 400-step clip
    by_label = {s.label: (hours, configured) for _, s, hours, configured in choices}
    paper = 2048 * (1 + 8) * 20.4 / 3600  # 2,048 16-frame clips + 2,048 videos of 8 clips
    assert by_label["ddim400_eta1"] == (pytest.approx(paper), False)
    assert by_label["dpmpp2m15_time"] == (pytest.approx(paper * 15 / 400), True)  # the configured one, added
    assert by_label["ddim50_eta1"][0] == pytest.approx(paper / 8)
    assert [s.evaluations for _, s, _, _ in choices] == sorted((s.evaluations for _, s, _, _ in choices), reverse=True)
    md = sampler_markdown(choices)
    assert "| ucf101 | ddim400_eta1 | 400 | 104.4 | the paper's |" in md
    assert "| ucf101 | dpmpp2m15_time | 15 | 3.9 | configured |" in md
