"""Diffusion training and sampling: loss goes down, determinism, resume equivalence, latent cache,
per-sample seeds independent of the batch size, long videos, resumable sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_AE, mnist_data, prepare_with_autoencoder

from pvdm.checkpoints import load_diffusion
from pvdm.config import validate
from pvdm.data.store import ClipStore
from pvdm.diffusion.samplers import Sampler
from pvdm.models.autoencoder import AutoencoderConfig
from pvdm.sample import gather_samples, generate, sample_shard
from pvdm.train.diffusion import train_diffusion

AE = AutoencoderConfig(**TINY_AE)


def make_exp(**train) -> dict:
    exp = {
        "seed": 5,
        "data": mnist_data(clip_frames=16, num_train=12),
        "diffusion": {
            "model": {
                "model_channels": 32,
                "channel_mult": [1, 2],
                "num_res_blocks": 1,
                "attention_resolutions": [2],
                "num_heads": 2,
            },
            "train": {"steps": 6, "batch_size": 4, "lr": 1e-3, "save_every": 2, "log_every": 1, "ema_every": 2,
                      "cond_prob": 0.5, **train},
        },
    }
    return validate(exp, "test", definition="experiment")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    return prepare_with_autoencoder(make_exp(), tmp_path_factory.mktemp("diff"), TINY_AE)


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_diffusion(path).state_dict()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_training_lowers_loss_and_writes_outputs(setup, tmp_path):
    data, ae = setup
    metrics = train_diffusion(make_exp(steps=40, cache_latents=True, cache_stride=8), data, ae, tmp_path)
    for name in (
        "model.pt",
        "ema.pt",
        "untrained.pt",
        "metrics.json",
        "state.pt",
        "log.jsonl",
        "latents/meta.json",
        "latents/shard_00000.npy",
    ):
        assert (tmp_path / name).is_file(), name
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.7 * first, (first, last)
    assert {r["conditional"] for r in rows} == {0, 1}  # both kinds of batches were drawn
    assert metrics["ema_updates"] == 20
    assert not same(state(tmp_path / "model.pt"), state(tmp_path / "ema.pt"))
    assert not same(state(tmp_path / "model.pt"), state(tmp_path / "untrained.pt"))


@pytest.mark.slow
def test_untrained_is_the_initialisation_the_run_started_from(setup, tmp_path):
    # with a vanishing learning rate the trained weights stay the initial ones: untrained.pt must be them
    # (it was a second network built from a reseed, after loading the autoencoder had drawn from the RNG)
    data, ae = setup
    exp = make_exp(steps=2)
    exp["diffusion"]["train"].update(lr=1e-30, weight_decay=0.0)
    train_diffusion(exp, data, ae, tmp_path)
    trained, untrained = state(tmp_path / "model.pt"), state(tmp_path / "untrained.pt")
    assert trained.keys() == untrained.keys()
    assert all(torch.allclose(trained[k], untrained[k], rtol=0, atol=1e-20) for k in trained)


@pytest.mark.slow
def test_determinism_and_resume_equivalence(setup, tmp_path):
    data, ae = setup
    exp = make_exp()
    train_diffusion(exp, data, ae, tmp_path / "a")
    train_diffusion(exp, data, ae, tmp_path / "b")
    assert same(state(tmp_path / "a" / "model.pt"), state(tmp_path / "b" / "model.pt"))
    assert train_diffusion(exp, data, ae, tmp_path / "c", max_steps=3) == {"step": 3, "stopped": "max_steps"}
    train_diffusion(exp, data, ae, tmp_path / "c")
    for name in ("model.pt", "ema.pt"):
        assert same(state(tmp_path / "a" / name), state(tmp_path / "c" / name)), name


def test_conditional_training_needs_long_clips(setup, tmp_path):
    data, ae = setup
    exp = make_exp()
    exp["diffusion"]["model"]["cond"] = False
    with pytest.raises(ValueError, match="cond_prob > 0 needs a conditional U-Net"):
        train_diffusion(exp, data, ae, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(("sampler", "card_sampler"), [
    (Sampler("ddim", 4, 1.0), {"name": "ddim", "steps": 4, "eta": 1.0}),
    # the stochastic multistep solver: per-run memory and fresh noise at every step
    (Sampler("dpmpp2m_sde", 4), {"name": "dpmpp2m_sde", "steps": 4, "spacing": "time", "clip": True, "order": 2}),
])
def test_sampling_seeds_batch_size_long_videos_and_resume(setup, tmp_path, sampler, card_sampler):
    data, ae = setup
    train_diffusion(make_exp(steps=2), data, ae, tmp_path / "d")
    unet = tmp_path / "d" / "ema.pt"
    kw = dict(num_videos=5, frames=8, seed=3, sampler=sampler)
    generate(ae, unet, tmp_path / "s2", batch_size=2, **kw)
    generate(ae, unet, tmp_path / "s3", batch_size=3, **kw)
    a, b = ClipStore(tmp_path / "s2" / "clips"), ClipStore(tmp_path / "s3" / "clips")
    assert a.shape == (5, 8, 32, 32, 3)
    # A sample depends on its seed, not on its batch: same noise, same trajectory; only float rounding
    # of batched kernels differs (a 1-level uint8 flip in a few pixels).
    diff = np.abs(a.clips.astype(int) - b.clips.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert not np.array_equal(a[0], a[1])
    card = json.loads((tmp_path / "s2" / "samples.json").read_text())
    assert card["sampler"] == card_sampler and card["frames"] == 8
    assert card["sampler_label"] == sampler.label
    assert (tmp_path / "s2" / "preview.mp4").is_file() and (tmp_path / "s2" / "preview.gif").is_file()
    # long videos: 3 chained clips of 8 frames
    generate(ae, unet, tmp_path / "long", batch_size=2, num_videos=2, frames=24, seed=3, sampler=sampler)
    long = ClipStore(tmp_path / "long" / "clips")
    assert long.shape == (2, 24, 32, 32, 3)
    # a killed run resumes from its finished batches: a planted batch made with the same settings is
    # used as is; one made with other settings is discarded
    card = json.loads((tmp_path / "s2" / "samples.json").read_text())
    card = {k: v for k, v in card.items() if k != "shards"}
    planted = np.full((2, 8, 32, 32, 3), 7, np.uint8)
    for settings, reused in ((card, True), ({**card, "seed": 99}, False)):
        parts = tmp_path / f"r{reused}" / "shards" / "000of001.parts"
        parts.mkdir(parents=True)
        (parts / "card.json").write_text(json.dumps(settings))
        np.save(parts / "0000000_0000002.npy", planted)
        generate(ae, unet, tmp_path / f"r{reused}", batch_size=2, **kw)
        r = ClipStore(tmp_path / f"r{reused}" / "clips")
        assert np.array_equal(r.clips[:2], planted) == reused
        assert np.array_equal(r.clips[2:], a.clips[2:])  # same batching as a
    # Shards, each its own job, gathered: the union is the one-job set. Shard ranges [0, 2) and
    # [2, 5) fall on the batch boundaries of batch 2: byte-identical. Ranges [0, 1), [1, 3),
    # [3, 5) do not: the same samples up to the float rounding of batched kernels.
    for shards, exact in ((2, True), (3, False)):
        out = tmp_path / f"sharded{shards}"
        for k in range(shards):
            sample_shard(ae, unet, out, batch_size=2, shard=k, shards=shards, **kw)
        gathered = gather_samples(out, shards)
        g = ClipStore(out / "clips")
        assert g.videos == a.videos and gathered["num_videos"] == 5
        if exact:
            assert np.array_equal(g.clips, a.clips)
        else:
            diff = np.abs(g.clips.astype(int) - a.clips.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    (out / "shards" / "001of003.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing sample shards: .*001of003\.npy"):
        gather_samples(out, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        generate(ae, unet, tmp_path / "bad", batch_size=2, num_videos=1, frames=12, seed=0, sampler=Sampler("ddim", 2))
