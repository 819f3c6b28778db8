"""`pvdm init --videos DIR`: look at a folder of videos and write a config sized to it.

Inspection decodes every input once at a small size (frame count, frame rate, resolution, shots),
with the same listing, duplicate and split rules as `pvdm prepare`, so what it prints is what the
data stage will find. The written experiment is the CPU demo's model (config/config.yaml, measured
in benchmarks/demo_search) at the largest of 32 or 16 pixels the sources allow, with every
paper setting one comment away.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from pvdm.data.video_io import VideoDecodeError
from pvdm.data.videos import VideoOptions, decode_fitted, plan_inputs
from pvdm.utils.io import atomic_write_text

CLIP_FRAMES = 32  # condition + target halves of 16 frames: the pipeline's fixed clip
DEFAULTS = {"group_pattern": None, "test_fraction": 0.2}


def inspect_videos(root: Path, seed: int = 0, **settings: Any) -> list[dict[str, Any]]:
    """One row per input: path, split, group, status (ok / skipped / duplicate) and reason, frames,
    fps, size [w, h], duration (s) and shots, as `pvdm prepare` would see them."""
    entries = plan_inputs({**DEFAULTS, **settings}, root, seed)
    rows = []
    for e in entries:
        row: dict[str, Any] = {"path": e.name, "split": e.split, "group": e.group, "status": e.status,
                               "reason": e.reason}
        if e.status == "listed":
            try:
                _, info = decode_fitted(e.source, 16, "area", VideoOptions())
            except (VideoDecodeError, OSError) as err:
                row |= {"status": "skipped", "reason": str(err)}
            else:
                fps = info["fps"]
                row |= info | {"status": "ok", "duration": round(info["frames"] / fps, 2) if fps else None}
                longest = max(b - a for a, b in info["shots"])
                if longest < CLIP_FRAMES:  # what `pvdm prepare` will skip
                    row |= {"status": "skipped", "reason": f"no shot of {CLIP_FRAMES} frames (longest {longest} "
                            f"of {len(info['shots'])} shots)"}
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """What inspection found, one line per input and a summary line."""
    lines = [f"{'file':40s} {'split':5s} {'frames':>6s} {'fps':>6s} {'size':>9s} {'sec':>7s} shots"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['path'][:40]:40s} {r['status']}: {r['reason']}")
            continue
        size = f"{r['size'][0]}x{r['size'][1]}"
        fps = f"{r['fps']:.2f}" if r["fps"] else "-"
        sec = f"{r['duration']:.1f}" if r["duration"] else "-"
        lines.append(f"{r['path'][:40]:40s} {r['split']:5s} {r['frames']:6d} {fps:>6s} {size:>9s} {sec:>7s} "
                     f"{len(r['shots'])}")
    ok = [r for r in rows if r["status"] == "ok"]
    lines.append(f"{len(rows)} inputs: {len(ok)} usable ({sum(r['split'] == 'train' for r in ok)} train, "
                 f"{sum(r['split'] == 'test' for r in ok)} test), "
                 f"{sum(r['status'] == 'skipped' for r in rows)} skipped, "
                 f"{sum(r['status'] == 'duplicate' for r in rows)} duplicates, {sum(len(r['shots']) for r in ok)} shots")
    return "\n".join(lines)


def size_experiment(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The numbers of the written experiment, from the usable inputs."""
    usable = [r for r in rows if r["status"] == "ok"]
    if not usable:
        raise ValueError(f"no input has a shot of {CLIP_FRAMES} frames (the pipeline's clip): see the table above")
    side = min(min(r["size"]) for r in usable)
    train = sum(r["split"] == "train" for r in usable)
    test = sum(r["split"] == "test" for r in usable)
    if train < 2 or test < 1:
        raise ValueError(f"{train} train and {test} test videos with a {CLIP_FRAMES}-frame shot: FVD needs 2 "
                         "train videos and the held-out metrics 1 test video")
    return {
        "resolution": 32 if side >= 32 else 16,
        "source_side": side,
        "fvd_videos": min(32, train),
        "recon_videos": min(32, test),
        "usable": len(usable),
        "median_frames": int(statistics.median(r["frames"] for r in usable)),
    }


def write_config(
    root: Path, rows: list[dict[str, Any]], out: Path, exp_id: str = "myvideos", group_pattern: str | None = None
) -> dict[str, Any]:
    """Write the commented config for ``root``; returns the sizes it used."""
    sizes = size_experiment(rows)
    pattern = json.dumps(group_pattern) if group_pattern else "null"
    text = CONFIG_TEMPLATE.format(exp=exp_id, root=json.dumps(str(root.resolve())), root_text=root, group_pattern=pattern,
                                  **sizes)
    atomic_write_text(out, text)
    return sizes


CONFIG_TEMPLATE = """\
# Written by `pvdm init --videos {root_text}`.
# {usable} usable videos (median {median_frames} frames); smallest usable frame side {source_side} px.
# Budget: the CPU demo's model and steps (config/config.yaml). The whole DAG took 11 min 19 s on 2 shared
# CPU cores (AMD EPYC, load average ~3 from other jobs) for 4 short real videos; the autoencoder's 1,200
# steps (7 min 20 s) are most of it and do not grow with the data, the data stage does (~230 source
# frames/s, benchmarks/results/prepare_videos.md). Every paper setting (PVDM, CVPR 2023, 256x256) is the
# comment beside it.
# Run: pvdm prepare --config THIS --out results/{exp}/data   (the data stage alone)
#      snakemake --cores 2 --configfile THIS                (the whole DAG: train, sample, FVD, table)
experiments:
  {exp}:
    seed: 0
    label: Ours, {exp} {resolution}x{resolution} (CPU budget)
    data:
      dataset: videos
      root: {root}
      resolution: {resolution}        # paper: 256 (no larger than your smallest source side, {source_side})
      clip_frames: 32        # condition + target halves of 16 frames (paper: 16 + 16)
      frame_stride: 1        # keep every decoded frame
      fps: null              # null keeps each video's frame rate; a number resamples to it
      crop: center           # center = square centre crop; pad = whole frame, black bars
      shots: true            # cut clips within shots (no clip spans a scene cut)
      test_fraction: 0.2     # held-out share of source groups (ignored with train/ test/ folders or a CSV split)
      group_pattern: {group_pattern}    # regex whose first group names the source, e.g. "_(g\\d+)_" for UCF-101
      clips_per_video: 4     # evenly spaced training clips per video (paper: 1 random clip per step)
      long_frames: 0         # paper: 128 (FVD-128 needs many long videos)
      workers: 2
    autoencoder:
      model:                 # paper: resolution 256, frames 16, patch 4, channels 384, embed_dim 4
        resolution: {resolution}
        frames: 16
        patch_size: 8
        channels: 64
        depth: 2
        heads: 4
        dim_head: 16
        embed_dim: 16
        proj_depth: 1
        proj_heads: 4
        proj_dim_head: 16
        proj_mlp_dim: 128
      stage1: {{steps: 1200, batch_size: 4, lr: 1.0e-3, save_every: 500, log_every: 50, eval_videos: {recon_videos}}}
      # losses: the original's 4 x L1 + 4 x LPIPS (real footage; the Moving MNIST demo uses MSE); paper lr 1e-4
      gan: {{steps: 20, batch_size: 2, lr: 1.0e-4, disc_ndf: 16, eval_every: 10, eval_videos: {recon_videos}, patience: 2,
             save_every: 10, log_every: 5}}  # paper: disc_ndf 64
    diffusion:
      model: {{model_channels: 64, channel_mult: [1, 2, 2], num_res_blocks: 1, attention_resolutions: [2, 4],
              num_heads: 4, cond: true, prediction: v, position_embedding: true}}
      # paper: model_channels 256, channel_mult [1, 2, 4], num_res_blocks 2, eps prediction, no position embedding
      train: {{steps: 180, batch_size: 16, lr: 2.0e-3, min_snr_gamma: 5, cond_prob: 0.3, ema_decay: 0.999,
              ema_every: 5, cache_latents: true, cache_stride: 16, save_every: 50, log_every: 10}}
      # paper: lr 1e-4, no Min-SNR weighting, ema 0.9999, hundreds of thousands of steps
    sampling:
      num_videos: {fvd_videos}         # paper: 2048
      long_videos: 0         # paper: 2048 videos of 128 frames
      sampler: {{name: ddim, steps: 25, eta: 1.0}}  # paper: 400-step DDIM
      batch_size: 32
    eval:
      fvd_videos: {fvd_videos}         # paper: 2048; real clips from your train split, one per video
      recon_videos: {recon_videos}       # held-out clips for PSNR / SSIM / LPIPS
      rfvd: false
      bootstrap: 100
"""
