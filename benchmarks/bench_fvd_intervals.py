"""Coverage of FVD interval methods on Gaussian features whose Fréchet distance is known.

Two populations ("real", "fake") of 400-d Gaussians with power-law spectra (lambda_i ~ i^-alpha, total
variance 1000, i.e. I3D-logit-like scales: per-class logit std ~1.6), the fake one with per-eigenvalue scale
changes, slightly rotated eigenvectors and a mean shift. For each N (real and fake sets of N each) and each
trial: draw both sets (z @ L^T + mu from precomputed factors), compute the FD estimate, one set of bootstrap
and half-sample replicates shared by all methods, and every interval of pvdm.eval.intervals. Reported per
method and N: coverage of the population FD (closed form from the two Gaussians) and of E[FD_N] (the
fixed-N value, from independent pilot draws), with binomial standard errors, and the mean width.

    python benchmarks/bench_fvd_intervals.py            # full run (about 30-40 min on one core)
    python benchmarks/bench_fvd_intervals.py --quick    # N = 64, 128, few trials (about a minute)

Writes benchmarks/results/fvd_interval_coverage.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import scipy.linalg

from pvdm.eval import intervals as iv
from pvdm.eval.fvd import frechet_distance

D = 400
TOTAL_VAR = 1000.0
SCENARIOS = {  # name: spectrum exponent, per-eigenvalue log-scale sd, rotation strength, ||mu_f - mu_r||^2
    "heavy_tail": dict(alpha=1.0, scale_sd=0.3, rot=0.02, shift2=60.0),
    "fast_decay": dict(alpha=2.0, scale_sd=0.3, rot=0.02, shift2=60.0),
}
# N: (trials, rounds, jackknife points per set, pilot draws for E[FD_N])
# 100 rounds everywhere: what the pipeline runs (evaluate_fvd's bootstrap_rounds).
FULL = {
    64: (200, 100, 32, 2000),
    128: (200, 100, 32, 2000),
    256: (150, 100, 32, 1000),
    512: (60, 100, 16, 300),
    1024: (30, 100, 16, 150),
    2048: (20, 100, 16, 100),
}
QUICK = {64: (40, 50, 16, 300), 128: (30, 50, 16, 200)}
FOCUS_N = (64, 128, 256)  # what the pipeline uses by default (CPU demo: 64-128)
NO_METHOD_GAP = 0.25  # above a mean gap of 25 points no method is recommended


class Population:
    """Real and fake Gaussians with known Fréchet distance; sampling is z @ L^T + mu."""

    def __init__(self, alpha: float, scale_sd: float, rot: float, shift2: float, seed: int = 0, d: int = D):
        rng = np.random.default_rng(seed)
        lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
        lam *= TOTAL_VAR / lam.sum()
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        u_real = q * np.sign(np.diag(r))  # Haar-random eigenvectors
        lam_fake = lam * np.exp(rng.normal(0, scale_sd, d))
        skew = rng.standard_normal((d, d)) * rot
        u_fake = scipy.linalg.expm(skew - skew.T) @ u_real  # a small rotation of the eigenvectors
        self.mu_real = rng.normal(0, 1, d)
        shift = rng.standard_normal(d)
        self.mu_fake = self.mu_real + shift * np.sqrt(shift2) / np.linalg.norm(shift)
        self.l_real = u_real * np.sqrt(lam)  # d d: S = L L^T
        self.l_fake = u_fake * np.sqrt(lam_fake)
        s_real, s_fake = self.l_real @ self.l_real.T, self.l_fake @ self.l_fake.T
        self.true_fd = frechet_distance(self.mu_real, s_real, self.mu_fake, s_fake, method="sqrtm")
        self.trace_real, self.trace_fake = float(lam.sum()), float(lam_fake.sum())

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        d = len(self.mu_real)
        real = rng.standard_normal((n, d)) @ self.l_real.T + self.mu_real  # n d
        fake = rng.standard_normal((n, d)) @ self.l_fake.T + self.mu_fake
        return real, fake


def intervals_from(theta, boot, sub, accel, n, m, conf=0.95) -> dict[str, tuple[float, float]]:
    return {
        "percentile": iv.percentile_interval(boot, conf),
        "bc": iv.bca_interval(theta, boot, 0.0, conf),
        "bca": iv.bca_interval(theta, boot, accel, conf),
        "basic": iv.basic_interval(theta, boot, conf),
        "recentered": iv.recentered_interval(theta, boot, conf),
        "subsampling": iv.subsampling_interval(theta, sub, n, m, conf),
        "halfsample_debiased": iv.halfsample_debiased_interval(theta, sub, n, m, conf),
        "fixed_n": iv.fixed_n_interval(theta, sub, n, m, conf),
    }


def pilot(pop: Population, n: int, draws: int, seed: int) -> dict[str, float]:
    """E[FD_N] and sd from independent draws; the real-vs-real floor from a few."""
    rng = np.random.default_rng(seed)
    values = np.array([iv.frechet_distance(*pop.draw(rng, n)) for _ in range(draws)])
    floors = []
    for _ in range(min(draws, 30)):
        a, _ = pop.draw(rng, n)
        b, _ = pop.draw(rng, n)
        floors.append(iv.frechet_distance(a, b))
    return {
        "mean_fd_n": float(values.mean()),
        "mean_fd_n_se": float(values.std(ddof=1) / np.sqrt(draws)),
        "sd_fd_n": float(values.std(ddof=1)),
        "floor_real": float(np.mean(floors)),
    }


def diagnostic(pop: Population, n: int, seed: int, draws: int = 12, rounds: int = 50) -> dict | None:
    """intervals.bias_exponent on independent datasets (median and range): ~1 in the 1/N regime, ~0 when
    the bias has saturated. Skipped above N = 512 (cost)."""
    if n > 512:
        return None
    rng = np.random.default_rng([seed, n, 7])
    b = np.array([iv.bias_exponent(*pop.draw(rng, n), rounds=rounds, seed=t) for t in range(draws)])
    return {
        "median": float(np.nanmedian(b)),
        "min": float(np.nanmin(b)),
        "max": float(np.nanmax(b)),
        "nan": int(np.isnan(b).sum()),
        "draws": draws,
        "rounds": rounds,
    }


def run_n(pop: Population, n: int, trials: int, rounds: int, jack: int, seed: int) -> dict:
    m, _ = iv.subsample_sizes(n, n)
    seqs = np.random.SeedSequence([seed, n]).spawn(trials)
    thetas, boot_bias, half_bias = [], [], []
    ivals: dict[str, list[tuple[float, float]]] = {k: [] for k in iv.METHODS}
    for t in range(trials):
        rng = np.random.default_rng(seqs[t])
        r = iv.FrechetResampler(*pop.draw(rng, n))
        theta = r.fd(*r.full_weights())
        boot = iv.bootstrap_replicates(r, rounds, rng)
        sub = iv.halfsample_replicates(r, rounds, rng)
        accel = iv.jackknife_acceleration(r, rng, points=jack)
        thetas.append(theta)
        boot_bias.append(boot.mean() - theta)
        half_bias.append(iv.halfsample_bias(theta, sub, n, m))
        for k, v in intervals_from(theta, boot, sub, accel, n, m).items():
            ivals[k].append(v)
    return {
        "theta": np.array(thetas),
        "boot_bias": np.array(boot_bias),
        "half_bias": np.array(half_bias),
        "intervals": {k: np.array(v) for k, v in ivals.items()},
    }


def coverage(ints: np.ndarray, target: float) -> tuple[float, float]:
    hit = (ints[:, 0] <= target) & (target <= ints[:, 1])
    p = float(hit.mean())
    return p, float(np.sqrt(max(p * (1 - p), 1 / len(hit)) / len(hit)))  # SE floored at 1 trial's worth


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return platform.processor() or "unknown"


def recommend(rows: list[dict], target: str, scenario: str | None = None) -> tuple[str, dict[str, float]]:
    """Method with the smallest mean |coverage - 95%| over FOCUS_N (and one scenario, or all); "none" when
    even that one misses by more than NO_METHOD_GAP."""
    score = {}
    for method in iv.METHODS:
        gaps = [
            abs(r["methods"][method][f"coverage_{target}"] - 0.95)
            for r in rows
            if r["n"] in FOCUS_N and scenario in (None, r["scenario"])
        ]
        if gaps:
            score[method] = float(np.mean(gaps))
    best = min(score, key=score.get)
    return (best if score[best] <= NO_METHOD_GAP else "none"), score


def exponent(b: dict | None) -> str:
    return "-" if b is None else f"{b['median']:.2f} [{b['min']:.2f}, {b['max']:.2f}]"


def markdown(result: dict) -> str:
    lines = [
        "# FVD interval coverage on Gaussians with known Fréchet distance",
        "",
        f"CPU: {result['cpu']}; {result['threads']}; run time {result['run_time_s'] / 60:.1f} min wall, "
        f"{result['cpu_time_s'] / 60:.1f} min CPU"
        f"{' (other jobs shared the CPU)' if result['shared_cpu_note'] else ''}.",
        f"d = {D}, total variance {TOTAL_VAR:g} per population, nominal level 95%. Coverage in % ± one "
        "binomial standard error (floored at one trial's worth when 0% or 100%); w = mean interval width. "
        "Population FD: closed form from the two Gaussians; E[FD_N]: mean of independent pilot draws.",
        "",
        "## Finite-N behaviour of the estimate",
        "",
        "| scenario | N | trials | rounds | true FD | E[FD_N] | bias (% of FD) | sd FD_N | real floor | "
        "bootstrap bias est. | half-sample bias est. | bias exponent (median [min, max]) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['n']} | {r['trials']} | {r['rounds']} | {r['true_fd']:.1f} | "
            f"{r['mean_fd_n']:.1f} | {100 * r['rel_bias']:+.0f}% | {r['sd_fd_n']:.1f} | {r['floor_real']:.1f} | "
            f"{r['boot_bias_est']:.1f} | {r['half_bias_est']:.1f} | {exponent(r.get('bias_exponent'))} |"
        )
    for target, title in (("pop", "the population FD"), ("fixed_n", "E[FD_N] (the fixed-N value)")):
        lines += ["", f"## Coverage of {title}", ""]
        lines.append("| scenario | N | " + " | ".join(iv.METHODS) + " |")
        lines.append("|---|---|" + "---|" * len(iv.METHODS))
        for r in result["rows"]:
            cells = []
            for method in iv.METHODS:
                s = r["methods"][method]
                cells.append(
                    f"{100 * s[f'coverage_{target}']:.0f}±{100 * s[f'coverage_{target}_se']:.1f} "
                    f"(w {s['mean_width']:.0f})"
                )
            lines.append(f"| {r['scenario']} | {r['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Recommendation (mean |coverage - 95%| in points over N in " + f"{list(FOCUS_N)})", ""]
    for target, rec in result["recommendation"].items():
        for scope, (method, gaps) in rec.items():
            text = ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(gaps.items(), key=lambda kv: kv[1]))
            lines.append(f"* {target}, {scope}: **{method}** ({text})")
    lines += [
        "",
        "Notes: an interval that covers the population FD needs the finite-N bias removed, which the half-sample",
        "(delete-d jackknife) estimate does only in the 1/N regime (bias exponent near 1); in the saturated regime",
        "(exponent near 0) no resampling method covers it. E[FD_N] is what the protocol at this N gives on average.",
        "Neither target is the real-vs-real floor; the floor is close to E[FD_N] - FD when the fake covariance",
        "resembles the real one, as here.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 64, 128 with few trials")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", nargs="*", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--render", type=Path, help="only rewrite the markdown (and recommendation) of this JSON")
    args = ap.parse_args()
    if args.render:
        result = json.loads(args.render.read_text())
        for si, name in enumerate(result["scenarios"]):
            pop = Population(**result["scenarios"][name], seed=args.seed + si)
            for row in result["rows"]:
                if row["scenario"] == name and "bias_exponent" not in row:
                    row["bias_exponent"] = diagnostic(pop, row["n"], args.seed + si)
        result["recommendation"] = {
            target: {"all scenarios": recommend(result["rows"], target)}
            | {name: recommend(result["rows"], target, name) for name in result["scenarios"]}
            for target in ("pop", "fixed_n")
        }
        text = markdown(result)
        print(text)
        args.render.write_text(json.dumps(result, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(text)
        return
    plan = QUICK if args.quick else FULL
    t0, p0 = time.time(), time.process_time()
    rows = []
    for si, name in enumerate(args.scenarios):
        pop = Population(**SCENARIOS[name], seed=args.seed + si)
        for n, (trials, rounds, jack, draws) in plan.items():
            t1 = time.time()
            pil = pilot(pop, n, draws, seed=args.seed + 1000 + n)
            res = run_n(pop, n, trials, rounds, jack, seed=args.seed + si)
            methods = {}
            for method, ints in res["intervals"].items():
                cp, cp_se = coverage(ints, pop.true_fd)
                cf, cf_se = coverage(ints, pil["mean_fd_n"])
                methods[method] = {
                    "coverage_pop": cp,
                    "coverage_pop_se": cp_se,
                    "coverage_fixed_n": cf,
                    "coverage_fixed_n_se": cf_se,
                    "mean_width": float(np.mean(ints[:, 1] - ints[:, 0])),
                    "mean_lo": float(np.mean(ints[:, 0])),
                    "mean_hi": float(np.mean(ints[:, 1])),
                }
            row = {
                "scenario": name,
                "n": n,
                "trials": trials,
                "rounds": rounds,
                "jackknife_points": jack,
                "pilot_draws": draws,
                "true_fd": pop.true_fd,
                "mean_theta": float(res["theta"].mean()),
                "rel_bias": float((pil["mean_fd_n"] - pop.true_fd) / pop.true_fd),
                "boot_bias_est": float(res["boot_bias"].mean()),
                "half_bias_est": float(res["half_bias"].mean()),
                **pil,
                "bias_exponent": diagnostic(pop, n, args.seed + si),
                "methods": methods,
                "seconds": time.time() - t1,
            }
            rows.append(row)
            print(
                f"{name} N={n}: FD {pop.true_fd:.1f}, E[FD_N] {pil['mean_fd_n']:.1f} (sd {pil['sd_fd_n']:.1f}); "
                + ", ".join(
                    f"{k} {100 * v['coverage_pop']:.0f}/{100 * v['coverage_fixed_n']:.0f}%"
                    for k, v in methods.items()
                )
                + f"  [{row['seconds']:.0f}s]",
                flush=True,
            )
    recommendation = {}
    for target in ("pop", "fixed_n"):
        recommendation[target] = {"all scenarios": recommend(rows, target)}
        for name in args.scenarios:
            recommendation[target][name] = recommend(rows, target, name)
    result = {
        "cpu": cpu_model(),
        "threads": "single-threaded BLAS (OMP/MKL/OPENBLAS_NUM_THREADS=1 expected)",
        "shared_cpu_note": True,
        "run_time_s": time.time() - t0,
        "cpu_time_s": time.process_time() - p0,
        "quick": args.quick,
        "d": D,
        "total_var": TOTAL_VAR,
        "scenarios": {k: SCENARIOS[k] for k in args.scenarios},
        "confidence": 0.95,
        "rows": rows,
        "recommendation": recommendation,
    }
    text = markdown(result)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "fvd_interval_coverage" + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text)


if __name__ == "__main__":
    main()
