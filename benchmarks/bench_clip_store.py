"""Training-input throughput: clip store (memory map) vs decoding the source video per item.

The original PVDM loader decodes the whole .avi for every item, takes a random window of
consecutive frames and crops/resizes it. Our data stage does that once; training reads uint8
clips from a memory-mapped store. Both sides deliver uint8 clips (the float conversion happens
on the training device and is the same for both). This prints clips/s for both at UCF-101's source format
(320x240 MPEG-4 AVI, 150 frames, re-encoded from real footage in tests/data/videos).

    python benchmarks/bench_clip_store.py [--resolution 256] [--frames 16] [--videos 24]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from pvdm.data.loader import ClipBatches
from pvdm.data.store import ClipStore, ClipStoreWriter
from pvdm.data.transforms import center_crop_resize
from pvdm.data.video_io import decode_video

SOURCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "videos" / "tree.avi"


def make_ucf_like_videos(folder: Path, count: int, frames: int = 150) -> list[Path]:
    src = decode_video(SOURCE)  # 68 real frames, 320x240
    clip = np.concatenate([src, src[::-1]] * 2)[:frames]  # ping-pong to UCF-101's typical length
    paths = []
    for i in range(count):
        path = folder / f"v_{i:03d}.avi"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            for f in np.roll(clip, i, axis=0):
                for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(p)
            for p in stream.encode():
                out.mux(p)
        paths.append(path)
    return paths


def decode_per_item(paths: list[Path], n_items: int, frames: int, resolution: int) -> float:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n_items):
        video = decode_video(paths[i % len(paths)])  # the whole file, as the original loader
        start = rng.integers(0, len(video) - frames + 1)
        torch.from_numpy(center_crop_resize(video[start : start + frames], resolution))
    return n_items / (time.perf_counter() - t0)


def store_reads(store: ClipStore, n_items: int, frames: int, batch: int) -> float:
    batches = ClipBatches(store, batch, frames, seed=0)
    t0 = time.perf_counter()
    for step in range(n_items // batch):
        batches.get(step)
    return (n_items // batch) * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resolution", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_ucf_like_videos(tmp, args.videos)
        for res in args.resolution:
            writer = ClipStoreWriter(tmp / f"store{res}", 32, res)
            for p in paths:
                video = decode_video(p)
                vid = writer.add_video(p.name)
                for s in (0, 59, 118):
                    writer.add_clip(center_crop_resize(video[s : s + 32], res), vid, s)
            writer.close()
            store = ClipStore(tmp / f"store{res}")
            store_reads(store, args.batch, args.frames, args.batch)  # warm the page cache, as in training
            decode = decode_per_item(paths, args.items, args.frames, res)
            read = store_reads(store, args.items * 10, args.frames, args.batch)
            rows.append((res, decode, read, read / decode))
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch threads 2, "
        f"{args.frames} frames per clip, batch {args.batch}"
    )
    print(
        f"{'resolution':>10} | {'decode per item (clips/s)':>26} | {'clip store (clips/s)':>21} | {'speed-up':>8}"
    )
    print("-" * 76)
    for res, decode, read, ratio in rows:
        print(f"{res:>10} | {decode:>26.1f} | {read:>21.1f} | {ratio:>7.1f}x")


if __name__ == "__main__":
    main()
