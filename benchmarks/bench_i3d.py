"""I3D feature-extraction throughput and Fréchet-distance time.

Targets: >= 1.3 videos/s for 16x224x224 on CPU with 2 threads (the JAX reference's speed,
docs/evaluation.md#i3d-reference-outputs) and < 1 s for the Fréchet distance of 400-d statistics.

    python benchmarks/bench_i3d.py                   # CPU, 2 threads
    python benchmarks/bench_i3d.py --device cuda     # GPU, with compute_features' automatic batch size
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pvdm.eval import fvd
from pvdm.eval.i3d import load_i3d
from pvdm.eval.intervals import fixed_n


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN / cuDNN pick their kernels on the first call)
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_forward(device: str, repeats: int, t128: bool) -> list[tuple[str, str]]:
    rows = []
    variants = [("unfused BN, NCTHW", False, False), ("fused BN, NCTHW", True, False),
                ("unfused BN, channels_last_3d", False, True), ("fused BN, channels_last_3d", True, True)]
    configs = [(1, 16), (2, 16), (4, 16)]
    for name, fuse, channels_last in variants:
        model = load_i3d(device, fuse=fuse, channels_last=channels_last)
        for b, t in configs + ([(1, 128)] if t128 and fuse else []):
            x = torch.rand(b, 3, t, 224, 224, device=device) * 2 - 1
            with torch.inference_mode():
                sec = best_time(lambda m=model, x=x: m(x), repeats if t == 16 else 1)
            rows.append((f"I3D forward {name}, B={b}, {t}x224x224", f"{b / sec:.2f} videos/s"))
            print(*rows[-1], sep=" | ", flush=True)
    return rows


def bench_pipeline(device: str, n: int, frames: int, size: int) -> tuple[str, str]:
    """compute_features end to end on uint8 clips (resize + I3D), load_i3d defaults, automatic batch size."""
    clips = np.random.default_rng(0).integers(0, 256, size=(n, frames, size, size, 3), dtype=np.uint8)
    model = load_i3d(device)
    fvd.compute_features(clips[:2], model=model, device=device)  # warm-up
    t0 = time.perf_counter()
    fvd.compute_features(clips, model=model, device=device)
    sec = time.perf_counter() - t0
    bs = fvd.auto_batch_size(frames, torch.device(device))
    return (f"compute_features {n} clips {frames}x{size}x{size} uint8 (batch {bs})", f"{n / sec:.2f} videos/s")


def bench_frechet(n: int = 2048, d: int = 400) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    mu1, s1 = fvd.feature_stats(rng.normal(size=(n, d)) @ mix)
    mu2, s2 = fvd.feature_stats(rng.normal(size=(n, d)) @ mix * 1.1 + 0.1)
    rows = []
    for method, check in (("sqrtm", False), ("eig", False), ("sqrtm", True)):
        sec = best_time(lambda m=method, c=check: fvd.frechet_distance(mu1, s1, mu2, s2, method=m, cross_check=c), 3)
        label = f"Fréchet distance {d}-d, {method}" + (" + eig cross-check" if check else "")
        rows.append((label, f"{sec * 1000:.0f} ms"))
        print(*rows[-1], sep=" | ", flush=True)
    feats = rng.normal(size=(n, d)) @ mix
    t0 = time.perf_counter()
    fixed_n(feats, feats * 1.1 + 0.1, rounds=20, seed=0)
    rows.append((f"fixed_n interval, per round ({n} x {d})", f"{(time.perf_counter() - t0) / 20 * 1000:.0f} ms"))
    print(*rows[-1], sep=" | ", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-t128", action="store_true", help="skip the 128-frame forward")
    p.add_argument("--pipeline-videos", type=int, default=8, help="clips for the end-to-end compute_features row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    rows = bench_forward(args.device, args.repeats, not args.no_t128)
    rows.append(bench_pipeline(args.device, args.pipeline_videos, 16, 128))
    print(*rows[-1], sep=" | ", flush=True)
    rows += bench_frechet()
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'what':<{width}} | result |\n|{'-' * (width + 2)}|--------|")
    for what, result in rows:
        print(f"| {what:<{width}} | {result} |")


if __name__ == "__main__":
    main()
