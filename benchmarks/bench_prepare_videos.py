"""Prepare throughput of `dataset: videos` on real footage: decoded frames per second.

For each video: the first decoding pass alone without shot detection (decode + frame-rate
resampling), the same pass with shot detection (pvdm.data.shots), and the whole per-file work of
`pvdm prepare` (both passes, clips fitted to 32x32, content hash) at the default settings. Frames/s
counts source frames decoded (the second pass's decoding is included in the last column's time
but not in its frame count). One process, 2 torch threads, repeated ``--repeat`` times (best kept).

    python benchmarks/bench_prepare_videos.py [--videos DIR] [--out benchmarks/results/prepare_videos.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from bench_demo import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from pvdm.data.prepare import ClipParams
from pvdm.data.sources import VideoFile
from pvdm.data.videos import VIDEO_EXTENSIONS, VideoOptions, process_video, walk_frames
from pvdm.utils.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "data" / "real-videos"


def best_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(path: Path, repeat: int) -> dict:
    source = VideoFile(path, path.name)
    _, info = walk_frames(source, VideoOptions(shots=False), None)
    n = info["frames"]
    plain = best_seconds(lambda: walk_frames(source, VideoOptions(shots=False), None), repeat)
    shots = best_seconds(lambda: walk_frames(source, VideoOptions(), None), repeat)
    params = ClipParams(resolution=32, clip_frames=32, frame_stride=1, resize_filter="bilinear", min_frames=0)
    job = (source, params, "even", 1, 0, 0, 0, VideoOptions())
    whole = best_seconds(lambda: process_video(job), repeat)
    return {"video": path.name, "size": f"{info['size'][0]}x{info['size'][1]}", "frames": n,
            "decode": n / plain, "decode+shots": n / shots, "prepare": n / whole}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS if DEFAULT_VIDEOS.is_dir()
                    else REPO / "tests" / "data" / "videos")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load_before = os.getloadavg()[0]
    paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    rows = [measure(p, args.repeat) for p in paths]
    total = {k: sum(r["frames"] for r in rows) / sum(r["frames"] / r[k] for r in rows)
             for k in ("decode", "decode+shots", "prepare")}
    lines = [
        f"# `dataset: videos` prepare throughput ({cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"torch threads 2, Python {platform.python_version()})",
        "",
        "Decoded source frames per second, best of "
        f"{args.repeat}; `python benchmarks/bench_prepare_videos.py`. Measured on a shared machine (load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; other engineers' jobs ran): "
        "differences under ~30 % are noise. The second decoding pass (only the clips' frames are fitted) "
        "is why the last column is lower than the first.",
        "",
        "| video | size | frames | decode | decode + shots | whole prepare of the file |",
        "|---|---|---|---|---|---|",
        *(f"| {r['video']} | {r['size']} | {r['frames']} | {r['decode']:.0f} | {r['decode+shots']:.0f} | "
          f"{r['prepare']:.0f} |" for r in rows),
        f"| all | | {sum(r['frames'] for r in rows)} | {total['decode']:.0f} | {total['decode+shots']:.0f} | "
        f"{total['prepare']:.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
