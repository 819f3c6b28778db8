"""Sampling: latent diffusion -> triplane latents -> decoded uint8 videos in a clip store.

16-frame clips and long videos (n x T frames: clip 1 from the dropped condition, clip k > 1
conditioned on the generated clean latent of clip k - 1) go through the same path. Sample i is
drawn from its own generator seeded by (seed, i), so a video does not depend on the batch size,
the device count or which shard it fell into. Batches are written as shards (atomically) and
skipped on a rerun, so a killed sampling job resumes; the store is assembled at the end.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvdm.checkpoints import load_autoencoder, load_diffusion
from pvdm.data.loader import to_uint8
from pvdm.data.store import ClipStore, ClipStoreWriter
from pvdm.diffusion.samplers import Sampler, sample_long
from pvdm.utils.device import autocast, default_device
from pvdm.utils.io import atomic_save_npy, atomic_write_json, read_json, sha256_file
from pvdm.utils.media import write_grid
from pvdm.utils.progress import Progress
from pvdm.utils.seeding import sample_seed

log = logging.getLogger("pvdm.sample")

def generate(
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
    preview: int = 16,
) -> dict[str, Any]:
    """Write ``num_videos`` videos of ``frames`` frames to ``out/clips`` (a clip store) with
    ``out/preview.{mp4,gif}`` and ``out/samples.json`` (the sampler card). ``weights`` names the
    U-Net weights for the card: ema, raw, untrained or released."""
    out = Path(out)
    dev = torch.device(device) if device else default_device()
    ae = load_autoencoder(autoencoder, map_location=dev).eval()
    unet = load_diffusion(diffusion, map_location=dev).eval()
    t, res = ae.cfg.frames, ae.cfg.resolution
    if frames % t:
        raise ValueError(f"frames={frames} is not a multiple of the autoencoder's clip length {t}")
    n_clips = frames // t
    if n_clips > 1 and not unet.cfg.cond:
        raise ValueError(f"{diffusion}: an unconditional U-Net cannot chain clips into {frames}-frame videos")
    shape_one = (ae.cfg.embed_dim, ae.cfg.latent_length)
    card = {
        "num_videos": num_videos,
        "frames": frames,
        "clips_per_video": n_clips,
        "resolution": res,
        "sampler": sampler.to_dict(),
        "sampler_label": sampler.label,
        "weights": weights,
        "ema": {"ema": True, "raw": False}.get(weights or ""),
        "seed": seed,
        "per_sample_seed": "seed * 1000003 + index",
        "autoencoder": str(autoencoder),
        "autoencoder_sha256": sha256_file(autoencoder),
        "diffusion": str(diffusion),
        "diffusion_sha256": sha256_file(diffusion),
        "amp": amp,
    }
    shards = out / "shards"
    # Shards of a killed run are reused only if they were made with exactly these settings.
    if shards.exists() and (not (shards / "card.json").exists() or read_json(shards / "card.json") != card):
        log.warning("%s holds shards of other sampler settings: starting over", shards)
        shutil.rmtree(shards)
    shards.mkdir(parents=True, exist_ok=True)
    atomic_write_json(shards / "card.json", card)
    with Progress(num_videos, f"sampling {frames}-frame videos") as bar:
        for start in range(0, num_videos, batch_size):
            stop = min(start + batch_size, num_videos)
            shard = shards / f"{start:07d}_{stop:07d}.npy"
            if shard.exists():  # done before a kill
                bar.update(stop - start)
                continue
            gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(start, stop)]
            with torch.no_grad(), autocast(dev, amp):
                z = sample_long(unet, n_clips, (stop - start, *shape_one), sampler, generators=gens, device=dev)  # n b c l
                videos = torch.cat([ae.decode(z[k].float()) for k in range(n_clips)], dim=2)  # b c (n t) h w
            atomic_save_npy(shard, to_uint8(videos))
            bar.update(stop - start)
    writer = ClipStoreWriter(out / "clips", frames, res, meta={"sampler_card": card})
    for path in sorted(shards.glob("*.npy")):
        first = int(path.stem.split("_")[0])
        for j, video in enumerate(np.load(path)):
            writer.add_clip(video, writer.add_video(f"sample_{first + j:07d}"), 0)
    if len(writer) != num_videos:
        writer.abort()
        raise RuntimeError(f"{shards}: {len(writer)} samples found, {num_videos} expected")
    writer.close()
    shutil.rmtree(shards)
    store = ClipStore(out / "clips")
    write_grid(np.asarray(store.clips[: min(preview, num_videos)]), out / "preview", fps=8)
    atomic_write_json(out / "samples.json", card)
    log.info("wrote %d samples to %s", num_videos, out / "clips")
    return card
