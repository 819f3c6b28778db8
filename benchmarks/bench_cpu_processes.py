"""Training speed on a small CPU machine: one process with N threads against N processes (torchrun over
gloo, one thread each), for the embedded default's autoencoder and U-Net.

PyTorch's intra-op threads split each operation; on the demo's small tensors most operations are too
short to split well (and the pipeline's sleeping OpenMP threads, see threads.md, pay a wake-up per
operation). Data parallel processes split the batch instead and synchronise once per step. This prints
seconds per optimiser step (from the jobs' own log.jsonl times, start-up excluded) and the wall time of
the whole command (start-up and, for the U-Net, the latent cache included).

    python benchmarks/bench_cpu_processes.py                       # needs results/mnist (the demo's data and GAN stage)
    python benchmarks/bench_cpu_processes.py --steps 60 --json out.json

Nothing else should run on the machine meanwhile (README, "Measuring").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_demo import cpu_model  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

EXP = "mnist"


def settings(sections: tuple[str, ...], train_key: str, steps: int, log_every: int) -> str:
    from pvdm.config import load_config
    from pvdm.dag import Dag

    plan = Dag(load_config([REPO / "config" / "config.yaml"]))[EXP]
    picked = json.loads(plan.settings(*sections))
    stage, key = train_key.split(".")
    train = picked[stage][key]
    train.update(steps=steps, log_every=log_every, save_every=steps)
    return json.dumps(picked)


def step_seconds(log: Path) -> float:
    """Seconds per step between the first and the last logged step."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if len(rows) < 2:
        raise SystemExit(f"{log}: fewer than two logged steps")
    return (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"])


def run(stage: str, nproc: int, cores: int, steps: int, root: Path, work: Path) -> dict:
    out = work / f"{stage}_{nproc}"
    shutil.rmtree(out, ignore_errors=True)
    if stage == "autoencoder":
        cmd = ["train-autoencoder", "--settings", settings(("autoencoder.model", "autoencoder.stage1"), "autoencoder.stage1", steps, 10)]
    else:
        cmd = ["train-diffusion", "--settings", settings(("diffusion",), "diffusion.train", steps, 10),
               "--autoencoder", str(root / "autoencoder" / "gan" / "model.pt")]
    env = {**os.environ, "OMP_NUM_THREADS": str(cores)}  # pvdm divides it by the processes
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pvdm.cli", "--nproc", str(nproc), *cmd, "--data", str(root / "data"),
                    "--out", str(out)], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    log = out / "log.jsonl"
    return {"stage": stage, "processes": nproc, "threads_each": max(1, cores // nproc), "steps": steps,
            "s_per_step": round(step_seconds(log), 4), "wall_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--root", type=Path, default=REPO / "results" / EXP)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    for need in (args.root / "data" / "manifest.json", args.root / "autoencoder" / "gan" / "model.pt"):
        if not need.exists():
            raise SystemExit(f"{need} is missing: run `snakemake --cores 2 {args.root}/autoencoder/gan/model.pt` first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_cpu_processes_") as tmp:
        for stage in ("autoencoder", "diffusion"):
            for nproc in (1, args.cores):
                rows.append(run(stage, nproc, args.cores, args.steps, args.root, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{cpu_model()}, {os.cpu_count()} cores; {args.steps} steps per run; the demo's batch sizes\n")
    print("| stage | processes x threads | s per step | speed-up | wall s (start-up included) |")
    print("|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["stage"] == r["stage"] and b["processes"] == 1)
        print(f"| {r['stage']} | {r['processes']} x {r['threads_each']} | {r['s_per_step']:.3f} | "
              f"{base['s_per_step'] / r['s_per_step']:.2f}x | {r['wall_s']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
