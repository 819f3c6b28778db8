"""Time and peak memory of one fp32 forward + backward (batch 1, L1 loss) of the autoencoder on CPU.

Each case runs in a fresh subprocess, so ru_maxrss is that case's own peak resident memory.

    python benchmarks/bench_autoencoder.py                          # default, default+ckpt, paper+ckpt
    python benchmarks/bench_autoencoder.py --cases default paper   # paper without checkpointing: > 10 GB
    python benchmarks/bench_autoencoder.py --threads 2 --repeats 2 --out bench.json

Reference (docs/original-pvdm.md#cpu-measurements, 2 threads): the original's paper-scale fp32
forward + backward did not fit in 23 GB (OOM-killed at 24.3 GB); its forward alone took 21-32 s.
Timings on a shared machine vary; the load average printed with each case shows contention.
Peak RSS includes freed memory that glibc keeps for reuse; MALLOC_MMAP_THRESHOLD_=1048576 in the
environment (inherited by the subprocesses) returns large blocks to the OS and lowers it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
from pvdm.utils.io import atomic_write_json

CASES = {
    "default": lambda: AutoencoderConfig(),
    "default+ckpt": lambda: AutoencoderConfig(gradient_checkpointing=True),
    "paper+ckpt": lambda: AutoencoderConfig.paper(gradient_checkpointing=True),
    "paper": lambda: AutoencoderConfig.paper(),
}
DEFAULT_CASES = ["default", "default+ckpt", "paper+ckpt"]


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run_case(name: str, threads: int, repeats: int) -> dict:
    """Runs inside the subprocess."""
    torch.set_num_threads(threads)
    cfg = CASES[name]()
    torch.manual_seed(0)
    model = TriplaneAutoencoder(cfg)
    x = torch.rand(1, 3, cfg.frames, cfg.resolution, cfg.resolution) * 2 - 1  # b c t h w
    rss_model = max_rss_gib()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = (model(x) - x).abs().mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        runs.append({"forward_s": t1 - t0, "fwd_bwd_s": t2 - t0})
    return {
        "case": name,
        "input": f"1x3x{cfg.frames}x{cfg.resolution}x{cfg.resolution}",
        "params": sum(p.numel() for p in model.parameters()),
        "checkpointing": cfg.gradient_checkpointing,
        "threads": threads,
        "runs": runs,
        "rss_after_build_gib": rss_model,
        "peak_rss_gib": max_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each case")
    parser.add_argument("--repeats", type=int, default=1, help="forward+backward passes per case (first is cold)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--run-case", help=argparse.SUPPRESS)  # internal: the subprocess entry point
    args = parser.parse_args()

    if args.run_case:
        print(json.dumps(run_case(args.run_case, args.threads, args.repeats)))
        return

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"fp32, batch 1, {args.threads} threads\n")
    header = (f"{'case':<14} {'input':<16} {'params':>11} {'ckpt':>5} {'load':>5} {'forward s':>10} "
              f"{'fwd+bwd s':>10} {'RSS model GiB':>14} {'peak RSS GiB':>13}")
    print(header)
    print("-" * len(header))
    results = []
    for name in args.cases:
        load = os.getloadavg()[0]
        cmd = [sys.executable, __file__, "--run-case", name, "--threads", str(args.threads),
               "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name:<14} failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1]) | {"load_avg_1min": load}
        results.append(r)
        last = r["runs"][-1]
        print(f"{name:<14} {r['input']:<16} {r['params']:>11,} {'yes' if r['checkpointing'] else 'no':>5} "
              f"{load:>5.1f} {last['forward_s']:>10.2f} {last['fwd_bwd_s']:>10.2f} "
              f"{r['rss_after_build_gib']:>14.2f} {r['peak_rss_gib']:>13.2f}", flush=True)
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
