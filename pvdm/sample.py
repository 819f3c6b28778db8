"""Sampling: latent diffusion -> triplane latents -> decoded uint8 videos in a clip store.

16-frame clips and long videos (n x T frames: clip 1 from the dropped condition, clip k > 1
conditioned on the generated clean latent of clip k - 1) go through the same path. Sample i is
drawn from its own generator seeded by (seed, i), so a video does not depend on the batch size,
the device or which shard it fell into: a sample set can be split into shards, each its own job
(``sample_shard``), and put together afterwards (``gather_samples``) with the same result as one
job. Within a shard, finished batches are written atomically and reused by a rerun.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvdm.checkpoints import load_autoencoder, load_diffusion
from pvdm.dag import shard_name
from pvdm.data.loader import to_uint8
from pvdm.data.store import ClipStore, ClipStoreWriter
from pvdm.diffusion.samplers import Sampler, sample_long
from pvdm.utils.device import autocast, numerics, resolve_device
from pvdm.utils.io import FolderLock, atomic_path, atomic_save_npy, atomic_write_json, read_json, sha256_file
from pvdm.utils.media import write_grid
from pvdm.utils.progress import Progress
from pvdm.utils.seeding import SAMPLE_SEED_FORMULA, sample_seed

log = logging.getLogger("pvdm.sample")


def shard_range(num_videos: int, shard: int, shards: int) -> tuple[int, int]:
    """Videos [start, stop) of shard ``shard`` of ``shards`` (contiguous, sizes differ by at most 1)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not in [0, {shards})")
    return num_videos * shard // shards, num_videos * (shard + 1) // shards


def sample_shard(
    autoencoder: str | Path,
    diffusion: str | Path,
    out: str | Path,
    *,
    num_videos: int,
    frames: int,
    sampler: Sampler,
    seed: int = 0,
    batch_size: int = 16,
    amp: str = "none",
    device: str | None = None,
    weights: str | None = None,
    shard: int = 0,
    shards: int = 1,
) -> Path:
    """Videos ``shard_range(num_videos, shard, shards)`` of a sample set, as one uint8 array
    ``# n f h w c`` in ``out/shards/<shard>.npy`` beside its card ``<shard>.json``. Returns the .npy path."""
    out = Path(out)
    if num_videos < 1:
        raise ValueError(f"num_videos = {num_videos}: a sample set needs at least one video")
    dev = resolve_device(device)
    ae = load_autoencoder(autoencoder, map_location=dev).eval()
    unet = load_diffusion(diffusion, map_location=dev).eval()
    t = ae.cfg.frames
    if frames % t:
        raise ValueError(f"frames={frames} is not a multiple of the autoencoder's clip length {t}")
    n_clips = frames // t
    if n_clips > 1 and not unet.cfg.cond:
        raise ValueError(f"{diffusion}: an unconditional U-Net cannot chain clips into {frames}-frame videos")
    start, stop = shard_range(num_videos, shard, shards)
    card = {
        "num_videos": num_videos,
        "frames": frames,
        "clips_per_video": n_clips,
        "resolution": ae.cfg.resolution,
        "sampler": sampler.to_dict(),
        "sampler_label": sampler.label,
        "weights": weights,
        "ema": {"ema": True, "raw": False}.get(weights or ""),
        "seed": seed,
        "per_sample_seed": SAMPLE_SEED_FORMULA,
        "autoencoder": str(autoencoder),
        "autoencoder_sha256": sha256_file(autoencoder),
        "diffusion": str(diffusion),
        "diffusion_sha256": sha256_file(diffusion),
        "amp": amp,
        "numerics": numerics(dev),
    }
    name = shard_name(shard, shards)
    # Shards of one set run as parallel jobs in one folder: each shard has its own lock.
    lock = FolderLock(out / "shards", f"pvdm sample (shard {name})", name=f".{name}.lock")
    parts = out / "shards" / f"{name}.parts"
    # Batches of a killed run are reused only if they were made with exactly these settings.
    if parts.exists() and (not (parts / "card.json").exists() or read_json(parts / "card.json") != card):
        log.warning("%s holds batches of other sampler settings: starting over", parts)
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_json(parts / "card.json", card)
    batches = [(b, min(b + batch_size, stop)) for b in range(start, stop, batch_size)]
    models = SamplingModels(ae, unet, sampler, dev, amp, autoencoder, diffusion)
    sample_batches(models, parts, batches, seed, n_clips, f"sampling {frames}-frame videos {start}..{stop - 1}")
    # The shard's videos in one file, filled batch by batch (long videos can exceed RAM).
    target = out / "shards" / f"{name}.npy"
    res = ae.cfg.resolution
    with atomic_path(target, suffix=".npy") as tmp:
        videos = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(stop - start, frames, res, res, 3))
        for b0, b1 in batches:
            videos[b0 - start : b1 - start] = np.load(parts / f"{b0:07d}_{b1:07d}.npy")
        videos.flush()
        del videos
    atomic_write_json(target.with_suffix(".json"), {**card, "shard": shard, "shards": shards, "range": [start, stop]})
    shutil.rmtree(parts)
    lock.release()
    return target


@dataclass(frozen=True)
class SamplingModels:
    """What draws and decodes a batch: the autoencoder, the U-Net, the sampler, where and in what
    precision (the U-Net only; decoding is float32), and the checkpoint paths errors name."""

    ae: Any
    unet: Any
    sampler: Sampler
    device: torch.device
    amp: str
    ae_path: str | Path
    unet_path: str | Path


def sample_batches(m: SamplingModels, parts: Path, batches: list[tuple[int, int]], seed: int, n_clips: int,
                   desc: str) -> None:
    """Draw every batch ``[b0, b1)`` not already in ``parts`` as ``parts/<b0>_<b1>.npy`` (uint8)."""
    done = [b for b in batches if (parts / f"{b[0]:07d}_{b[1]:07d}.npy").exists()]
    if done:
        log.info("resuming %s: %d of %d batches were already sampled", parts, len(done), len(batches))
    shape_one = (m.ae.cfg.embed_dim, m.ae.cfg.latent_length)
    with Progress(batches[-1][1] - batches[0][0] if batches else 0, desc) as bar:
        for b0, b1 in batches:
            path = parts / f"{b0:07d}_{b1:07d}.npy"
            if not path.exists():
                gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(b0, b1)]
                with torch.no_grad(), autocast(m.device, m.amp):  # the U-Net only: latents are decoded in float32
                    z = sample_long(m.unet, n_clips, (b1 - b0, *shape_one), m.sampler, generators=gens,
                                    device=m.device, prediction=m.unet.cfg.prediction)  # n b c l
                    if not torch.isfinite(z).all():
                        raise FloatingPointError(f"{m.unet_path}: sampling gave non-finite latents (a diverged or "
                                                 "corrupt checkpoint?); no videos written")
                with torch.no_grad():
                    videos = torch.cat([m.ae.decode(z[k].float()) for k in range(n_clips)], dim=2)  # b c (n t) h w
                if not torch.isfinite(videos).all():
                    raise FloatingPointError(f"{m.ae_path}: decoding gave non-finite videos; no videos written")
                atomic_save_npy(path, to_uint8(videos))
            bar.update(b1 - b0)


def gather_samples(out: str | Path, shards: int, preview: int = 16, remove_shards: bool = False) -> dict[str, Any]:
    """Put the shards of a sample set together, in sample order: ``out/clips`` (a clip store),
    ``out/preview.{mp4,gif}`` and ``out/samples.json`` (the sampler card)."""
    out = Path(out)
    paths = [out / "shards" / f"{shard_name(k, shards)}.npy" for k in range(shards)]
    missing = [str(p) for p in paths if not p.is_file() or not p.with_suffix(".json").is_file()]
    if missing:
        raise FileNotFoundError(f"missing sample shards: {', '.join(missing)}; run `pvdm sample --shard KofN` for them")
    cards = [read_json(p.with_suffix(".json")) for p in paths]
    card = {k: v for k, v in cards[0].items() if k not in ("shard", "shards", "range")}
    expected = 0
    for p, c in zip(paths, cards, strict=True):
        if {k: v for k, v in c.items() if k not in ("shard", "shards", "range")} != card:
            raise ValueError(f"{p.with_suffix('.json')}: made with other settings than {paths[0].with_suffix('.json')}")
        if c["range"][0] != expected:
            raise ValueError(f"{p}: covers samples {c['range']}, expected to start at {expected}")
        expected = c["range"][1]
    if expected != card["num_videos"]:
        raise ValueError(f"{out / 'shards'}: the shards cover {expected} of {card['num_videos']} samples")
    writer = ClipStoreWriter(out / "clips", card["frames"], card["resolution"], meta={"sampler_card": card})
    for p, c in zip(paths, cards, strict=True):
        for j, video in enumerate(np.load(p, mmap_mode="r")):
            writer.add_clip(np.asarray(video), writer.add_video(f"sample_{c['range'][0] + j:07d}"), 0)
    writer.close()
    store = ClipStore(out / "clips")
    write_grid(np.asarray(store.clips[: min(preview, len(store))]), out / "preview", fps=8)
    atomic_write_json(out / "samples.json", {**card, "shards": shards})
    if remove_shards:
        shutil.rmtree(out / "shards")
    log.info("wrote %d samples from %d shards to %s", len(store), shards, out / "clips")
    return card


def generate(autoencoder: str | Path, diffusion: str | Path, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """A whole sample set in one process: ``sample_shard`` (one shard) + ``gather_samples``."""
    sample_shard(autoencoder, diffusion, out, **kwargs)
    return gather_samples(out, 1, remove_shards=True)
