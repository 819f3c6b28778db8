"""FVD16 and wall time per clip of every sampler, on one trained model of the embedded default.

For each sampler: N clips with the same per-sample seeds (``pvdm.sample.generate``, the pipeline's own
sampling path), FVD16 against N real training clips under the pipeline's protocol (``fvd_files``: real
I3D, 95% interval of E[FVD_N], real-vs-real floor at N) and network evaluations. Seconds per clip
(sampling + decoding) come from a separate ``--timing`` run with nothing else on the machine, so the
FVD runs may share it. Each sampler's result is its own JSON file: a killed run
resumes with the samplers it has not finished.

    python benchmarks/bench_samplers.py --run results/mnist            # a finished `snakemake --cores 2`
    python benchmarks/bench_samplers.py --run results/mnist --quick    # 2 samplers, 32 clips (a minute)
    python benchmarks/bench_samplers.py --run results/mnist --timing 32  # seconds per clip, alone on the machine
    python benchmarks/bench_samplers.py --report-only                  # table + plot from the JSON files

Writes benchmarks/results/samplers/{<label>.json, samplers.md, samplers.png}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from pvdm.diffusion.samplers import PAPER_SAMPLER as PAPER
from pvdm.diffusion.samplers import Sampler
from pvdm.utils.io import atomic_write_json

OUT = Path(__file__).parent / "results" / "samplers"
# The paper's sampler first (the reference), then the cheap ones, then the expensive rest.
SAMPLERS = [
    PAPER,
    Sampler("dpmpp2m", 25, spacing="time"), Sampler("dpmpp2m", 25, spacing="logsnr"),
    Sampler("ddim", 25, 1.0), Sampler("ddim", 50, 1.0),
    Sampler("dpmpp2m", 10, spacing="time"), Sampler("dpmpp2m", 10, spacing="logsnr"),
    Sampler("dpmpp2m", 15, spacing="time"), Sampler("dpmpp2m", 15, spacing="logsnr"),
    Sampler("dpmpp2m", 20, spacing="time"), Sampler("dpmpp2m", 20, spacing="logsnr"),
    Sampler("dpmpp2m", 50, spacing="time"),
    Sampler("dpmpp2m_sde", 25, spacing="time"), Sampler("dpmpp2m_sde", 25, spacing="logsnr"),
    Sampler("dpmpp2m_sde", 50, spacing="time"),
    Sampler("ddim", 100, 1.0), Sampler("ddim", 25, 0.0), Sampler("ddim", 50, 0.0),
    Sampler("ddim", 400, 0.0),
    # a diagnostic: DDIM eta 0 at 400 steps scores worst of all; is it the x0 clipping (its eps is not re-derived)?
    Sampler("ddim", 400, 0.0, clip=False),
]
QUICK = [Sampler("ddim", 25, 1.0), Sampler("dpmpp2m", 10, spacing="logsnr")]
# Asked for, but not a valid sampler on a 1000-step schedule: the table says why instead of a number.
IMPOSSIBLE = [{"name": "dpmpp2m", "steps": 50, "spacing": "logsnr"}]


def cpu_name() -> str:
    """The CPU as lscpu names it, with family/model and AVX-512 (timings differ between CPUs of one name)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        model = (f"{fields['Model name']} (family {fields.get('CPU family', '?')} model {fields.get('Model', '?')}, "
                 f"{'with' if 'avx512f' in fields.get('Flags', '') else 'no'} AVX-512)")
    except (OSError, subprocess.CalledProcessError, KeyError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def generate_clips(sampler: Sampler, run: Path, n: int, batch: int, out: Path) -> float:
    """``n`` 16-frame clips of the run's EMA U-Net under ``out`` (the pipeline's sampling path, seeds
    0..n-1); returns the seconds it took (sampling + decoding)."""
    from pvdm.sample import generate

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    generate(run / "autoencoder" / "gan" / "model.pt", run / "diffusion" / "ema.pt", out, num_videos=n, frames=16,
             sampler=sampler, seed=0, batch_size=batch, device="cpu", weights="ema")
    return time.perf_counter() - t0


def measure(sampler: Sampler, run: Path, n: int, batch: int, work: Path) -> dict:
    from pvdm.eval.fvd import fvd_files

    out = work / sampler.label
    seconds = generate_clips(sampler, run, n, batch, out)
    record = fvd_files(run / "data" / "train", out / "clips", work / f"{sampler.label}.fvd.json", num_videos=n,
                       frames=16, floor_videos=n, device="cpu", cache_dir=work / "features", dataset="moving_mnist",
                       split="train")
    shutil.rmtree(out)
    return {"sampler": sampler.to_dict(), "label": sampler.label, "evaluations": sampler.evaluations, "n": n,
            "fvd": record.value, "interval95": list(record.interval95 or []), "floor": record.real_floor.value
            if record.real_floor else None, "shared_wall_s_per_clip": seconds / n, "batch": batch, "cpu": cpu_name(),
            "model": str(run / "diffusion" / "ema.pt")}


def time_sampling(sampler: Sampler, run: Path, n: int, batch: int, work: Path) -> dict:
    """Seconds per clip (sampling + decoding) of ``n`` clips, nothing else running: FVD runs may share the
    machine (they record FVD only), timings must not."""
    out = work / f"time_{sampler.label}"
    seconds = generate_clips(sampler, run, n, batch, out)
    shutil.rmtree(out)
    return {"label": sampler.label, "evaluations": sampler.evaluations, "n": n, "batch": batch,
            "seconds_per_clip": seconds / n, "cpu": cpu_name()}


def report(results: list[dict], out: Path) -> None:
    """samplers.md (table) and samplers.png (FVD against network evaluations)."""
    paper = next((r for r in results if r["label"] == PAPER.label), None)
    rows = sorted(results, key=lambda r: (r["sampler"]["name"], r["evaluations"], r["label"]))
    timings = {t["label"]: t for t in (json.loads(p.read_text()) for p in sorted(out.glob("*.time.json")))}
    timed = next(iter(timings.values()), None)
    model = Path(results[0]["model"])
    shown = f"sha256 {hashlib.sha256(model.read_bytes()).hexdigest()[:12]}" if model.is_file() else str(model)
    lines = [f"Model: the embedded default's EMA U-Net ({shown}); N = {results[0]['n']} generated vs N real training "
             f"clips; real-vs-real floor at this N: {results[0]['floor']:.1f}. FVD16 with the 95% interval of "
             "E[FVD_N] (pvdm.eval.fvd).",
             "Seconds per clip (sampling + decoding): " + (
                 f"{timed['n']} clips at batch {timed['batch']} per sampler, measured alone on {timed['cpu']}."
                 if timed else "not measured (run --timing on a quiet machine)."), "",
             "| sampler | network evals | FVD16 [95% interval] | vs the paper's sampler | intervals overlap | "
             "s per clip |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["interval95"]
        same = paper is None or r is paper
        overlap = "" if same else ("yes" if lo <= paper["interval95"][1] and paper["interval95"][0] <= hi else "no")
        change = "" if same else f"{100 * (r['fvd'] / paper['fvd'] - 1):+.0f}%"
        t = timings.get(r["label"])
        lines.append(f"| {r['label']} | {r['evaluations']} | {r['fvd']:.1f} [{lo:.1f}, {hi:.1f}] | {change} | "
                     f"{overlap} | " + (f"{t['seconds_per_clip']:.3f} |" if t else "- |"))
    for d in IMPOSSIBLE:
        try:
            Sampler.from_config(d)
        except ValueError as e:
            lines.append(f"| {Sampler(d['name'], d['steps'], spacing=d['spacing']).label} | {d['steps']} | "
                         f"not a valid sampler: {e} | | | |")
    (out / "samplers.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    families: dict[str, list[dict]] = {}
    for r in results:
        s = r["sampler"]
        key = f"ddim eta {s['eta']:g}" if s["name"] == "ddim" else f"{s['name']} ({s.get('spacing')})"
        key += "" if s.get("clip", True) else ", no x0 clipping"
        families.setdefault(key, []).append(r)
    for key, rs in sorted(families.items()):
        rs = sorted(rs, key=lambda r: r["evaluations"])
        x = [r["evaluations"] for r in rs]
        y = [r["fvd"] for r in rs]
        err = [[r["fvd"] - r["interval95"][0] for r in rs], [r["interval95"][1] - r["fvd"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=key)
    if paper is not None:
        ax.axhspan(*paper["interval95"], color="grey", alpha=0.2, label="ddim 400 eta 1 (paper), 95% interval")
    ax.axvline(50, color="k", ls=":", lw=1)
    ax.set(xscale="log", xlabel="network evaluations per clip", ylabel=f"FVD16 (N = {results[0]['n']})",
           title="Samplers on the embedded default's U-Net")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "samplers.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="results/<experiment> of a finished embedded-default run")
    ap.add_argument("--num-videos", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="2 samplers, 32 clips, results in a temp folder")
    ap.add_argument("--only", nargs="*", help="labels to run (default: all)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--timing", type=int, metavar="N", help="only time N clips per sampler (run alone on the machine)")
    args = ap.parse_args(argv)
    out = args.out if not args.quick else args.out.parent / "samplers_quick"
    out.mkdir(parents=True, exist_ok=True)
    if args.timing:
        for s in QUICK if args.quick else SAMPLERS:
            path = out / f"{s.label}.time.json"
            if path.exists() or (args.only and s.label not in args.only):
                continue
            t = time_sampling(s, args.run, args.timing, min(args.batch, args.timing), out / "work")
            atomic_write_json(path, t)
            print(f"[bench_samplers] {s.label}: {t['seconds_per_clip']:.3f} s/clip ({args.timing} clips)", flush=True)
    elif not args.report_only:
        if args.run is None or not (args.run / "diffusion" / "ema.pt").is_file():
            ap.error(f"--run {args.run}: needs <run>/diffusion/ema.pt, <run>/autoencoder/gan/model.pt, <run>/data")
        samplers, n = (QUICK, 32) if args.quick else (SAMPLERS, args.num_videos)
        for s in samplers:
            path = out / f"{s.label}.json"
            if path.exists() or (args.only and s.label not in args.only):
                continue
            print(f"[bench_samplers] {s.label}: {n} clips", flush=True)
            r = measure(s, args.run, n, args.batch, out / "work")
            atomic_write_json(path, r)
            print(f"[bench_samplers] {s.label}: FVD16 {r['fvd']:.1f} {r['interval95']}, "
                  f"{r['shared_wall_s_per_clip']:.3f} s/clip (not alone)", flush=True)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if not p.name.endswith(".time.json")]
    if not results:
        print(f"no results in {out}", file=sys.stderr)
        return 1
    report(results, out)
    print((out / "samplers.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
