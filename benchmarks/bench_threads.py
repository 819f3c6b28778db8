"""How much a second CPU-heavy process slows a pvdm training job, per OpenMP wait policy.

A job that shares its cores with another process should slow down by about the share of the cores the
other process takes. With OpenMP threads that spin while they wait for work (GNU OpenMP's default
under OMP_WAIT_POLICY unset/ACTIVE), a job whose threads are descheduled one at a time can slow down
several-fold instead. This measures it: the embedded default's autoencoder (config/config.yaml,
experiments.mnist.autoencoder.model), training steps at batch 2 with 2 torch threads, alone and beside
(a) one single-threaded busy loop, (b) a second copy of the same job; for each wait policy. Every
cell runs in fresh processes (the policy is read once, when OpenMP starts).

    python benchmarks/bench_threads.py [--steps 12] [--out benchmarks/results/threads.md]

Run it on an otherwise idle machine; the table states the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = r"""
import json, os, sys, time
if os.environ.pop("BENCH_IMPORT_PVDM_FIRST", None):
    import pvdm  # what every pvdm command does before torch: sets OMP_WAIT_POLICY unless it is set
import torch, yaml
from pvdm.models.autoencoder import AutoencoderConfig, TriplaneAutoencoder
torch.set_num_threads(2)
torch.manual_seed(0)
cfg = yaml.safe_load(open(sys.argv[1]))["experiments"]["mnist"]["autoencoder"]["model"]
model = TriplaneAutoencoder(AutoencoderConfig(**cfg))
opt = torch.optim.AdamW(model.parameters(), 1e-4)
x = torch.rand(2, 3, cfg["frames"], cfg["resolution"], cfg["resolution"]) * 2 - 1  # b c t h w
def step():
    opt.zero_grad(set_to_none=True)
    (model(x) - x).abs().mean().backward()
    opt.step()
for _ in range(2):
    step()  # warm-up
steps, t0, c0 = int(sys.argv[2]), time.perf_counter(), time.process_time()
for _ in range(steps):
    step()
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}))
"""

PVDM_DEFAULT = "unset, pvdm imported first (the pipeline's default)"
BUSY = "import time\nend = time.time() + float(__import__('sys').argv[1])\nwhile time.time() < end:\n    pass\n"


def run_cell(policy: str | None, competitor: str | None, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    if policy == PVDM_DEFAULT:
        env["BENCH_IMPORT_PVDM_FIRST"] = "1"
    elif policy and "=" in policy:  # e.g. GOMP_SPINCOUNT=10000: spin that many times, then sleep
        key, value = policy.split("=", 1)
        env[key] = value
    elif policy:
        env["OMP_WAIT_POLICY"] = policy
    cfg = str(REPO / "config" / "config.yaml")
    others = []
    if competitor == "busy loop (1 thread)":
        others.append(subprocess.Popen([sys.executable, "-c", BUSY, "600"], env=env))
    elif competitor == "same job (2 threads)":
        others.append(subprocess.Popen([sys.executable, "-c", JOB, cfg, str(steps * 20)], env=env,
                                       stdout=subprocess.DEVNULL))
    try:
        time.sleep(3 if others else 0)  # let the competitor get going (the torch import takes seconds)
        out = subprocess.run([sys.executable, "-c", JOB, cfg, str(steps)], env=env, capture_output=True,
                             text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in others:
            p.kill()
            p.wait()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--policies", nargs="+", default=["unset", "PASSIVE", "GOMP_SPINCOUNT=10000",
                                                      "GOMP_SPINCOUNT=100000", PVDM_DEFAULT],
                   help="OMP_WAIT_POLICY values, KEY=VALUE environment settings, 'unset', or the pipeline's default")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "threads.md")
    args = p.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for policy in [None if p == "unset" else p for p in args.policies]:
        alone = run_cell(policy, None, args.steps)
        rows.append((policy, "none", alone, 1.0))
        for competitor in ("busy loop (1 thread)", "same job (2 threads)"):
            r = run_cell(policy, competitor, args.steps)
            rows.append((policy, competitor, r, r["wall_s"] / alone["wall_s"]))
        print(rows[-3:], flush=True)
    lines = [
        f"# Slow-down of a 2-thread training job beside a second process ({cpu_model()}, {os.cpu_count()} cores)",
        "",
        f"{time.strftime('%Y-%m-%d')}; load average before the run {load:.2f}; {args.steps} autoencoder training "
        "steps of the embedded default's model (batch 2) after 2 warm-up steps; torch threads 2. "
        "GOMP_SPINCOUNT=K: threads spin K times, then sleep (GNU OpenMP's default is 300,000 spins, 0 under PASSIVE).",
        "Expected from sharing alone: about 1.5x beside a 1-thread busy loop (3 runnable threads on 2 cores), about 2x "
        "beside a second 2-thread job.",
        "",
        "| OpenMP setting | second process | wall s | CPU s | slow-down |",
        "|---|---|---|---|---|",
    ]
    for policy, competitor, r, ratio in rows:
        lines.append(f"| {policy or 'unset (GNU OpenMP: spin, then sleep)'} | {competitor} | {r['wall_s']:.2f} | "
                     f"{r['cpu_s']:.2f} | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
