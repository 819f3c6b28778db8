"""The embedded default, end to end, as a user runs it: time per rule, total, no-op rerun, quality.

Runs ``snakemake --cores N`` (the README's command) from an empty ``results/mnist`` (unless --keep), then
again with nothing changed, and prints one table: each rule's wall time (Snakemake's ``benchmark:``
files), the DAG's total wall time, the no-op rerun's, and what the run produced (held-out PSNR/SSIM,
FVD16 of the trained and the untrained U-Net, the real-vs-real floor at the same N and the ratio).
Writes the same as JSON with ``--json``. Targets (issue 11): whole DAG <= 600 s and no-op <= 5 s on
2 cores; PSNR >= 24 dB; FVD16 <= 2.5 x the floor.

    python benchmarks/bench_demo.py                      # in the repository: deletes results/mnist first
    python benchmarks/bench_demo.py --json benchmarks/results/demo.json

Nothing else should run on the machine meanwhile (see README, "Measuring").
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXP = "mnist"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def snakemake(cores: int, extra: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), *extra], cwd=REPO, check=True)
    return time.monotonic() - t0


def rule_times(folder: Path) -> dict[str, float]:
    """Wall seconds per job from Snakemake's benchmark TSVs (``s`` column), by file stem."""
    out = {}
    for tsv in sorted(folder.glob("*.tsv")):
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            out[tsv.stem] = float(rows[-1]["s"])
    return out


def quality(root: Path) -> dict[str, float | None]:
    def read(name: str) -> dict | None:
        path = root / "metrics" / name
        return json.loads(path.read_text()) if path.is_file() else None

    recon, model, untrained = read("recon.json"), read("fvd16_model.json"), read("fvd16_untrained.json")
    q: dict[str, float | None] = {
        "psnr": recon["psnr"] if recon else None,
        "ssim": recon["ssim"] if recon else None,
        "fvd16": model["value"] if model else None,
        "fvd16_untrained": untrained["value"] if untrained else None,
    }
    floor = (model or {}).get("real_floor") or {}
    q["floor"], q["floor_n"] = floor.get("value"), floor.get("n")
    q["n"] = model["protocol"]["num_fake"] if model else None
    q["ratio"] = q["fvd16"] / q["floor"] if q["fvd16"] and q["floor"] else None
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="do not delete results/mnist first")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("snakemake_args", nargs="*", help="passed to snakemake (after --)")
    args = ap.parse_args()

    root = REPO / "results" / EXP
    bench = REPO / "results" / EXP / "benchmarks"
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(bench, ignore_errors=True)
    total = snakemake(args.cores, args.snakemake_args)
    noop = snakemake(args.cores, args.snakemake_args)
    times = rule_times(bench)
    q = quality(root)
    result = {
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "cores_given": args.cores},
        "total_s": round(total, 1), "noop_rerun_s": round(noop, 1),
        "rules_s": {k: round(v, 1) for k, v in times.items()},
        "quality": q,
    }
    print(f"\nEmbedded default on {result['machine']['cpu']} ({os.cpu_count()} logical CPUs), --cores {args.cores}\n")
    print("| rule | wall s |\n|---|---|")
    for name, s in sorted(times.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {s:.1f} |")
    print(f"| rules together | {sum(times.values()):.1f} |")
    print(f"| **whole DAG (snakemake)** | **{total:.1f}** |")
    print(f"| no-op rerun | {noop:.1f} |")

    def fmt(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    print("\n| held-out PSNR dB | SSIM | N | FVD16 | floor (same N) | FVD16 / floor | untrained FVD16 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {fmt(q['psnr'])} | {fmt(q['ssim'], '.3f')} | {q['n']} | {fmt(q['fvd16'], '.1f')} | "
          f"{fmt(q['floor'], '.1f')} (N={q['floor_n']}) | {fmt(q['ratio'])} | {fmt(q['fvd16_untrained'], '.1f')} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
