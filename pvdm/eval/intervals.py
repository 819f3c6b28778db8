"""Confidence intervals for the Fréchet distance between two feature sets, and its finite-N bias.

Every interval method has the signature ``fn(real, fake, rounds, seed, confidence=0.95) -> (lo, hi)`` and uses
the biased (1/N) covariance of ``pvdm.eval.fvd.feature_stats``. Two different targets exist:

* the *population* distance FD(P_real, P_fake), what "FVD" means in the abstract;
* the *fixed-N* value E[FD_N], the average FVD the protocol (N real, N fake videos) would give over draws of
  the videos. FD_N is biased upwards: with a 1/N covariance the mean term (+Tr S/N) and the trace terms
  (-Tr S/N) cancel exactly, and the whole bias comes from -2 Tr sqrt(S_r S_f) being underestimated. The bias
  is about the real-vs-real floor at N and, in 400-d with N <= d, many times the standard deviation.

Methods (benchmarks/bench_fvd_intervals.py measures their coverage of both targets):

* ``percentile``: percentile bootstrap, both sets resampled with replacement (what pvdm shipped before this module).
  Duplicated videos lower the covariance rank, so bootstrap FDs sit above the estimate.
* ``bc``: bias-corrected percentile (z0 from the share of bootstrap values below the estimate).
* ``bca``: BC with the jackknife acceleration. The jackknife is subsampled: ``JACKKNIFE_POINTS`` left-out
  videos per set (their influence moments scaled to N), since a full jackknife is 2N Fréchet distances.
* ``basic``: reverse percentile [2t - q_hi, 2t - q_lo], i.e. centred on the bootstrap bias-corrected estimate.
* ``recentered``: the bootstrap spread around t, [t + q_lo - mean, t + q_hi - mean]: the percentile interval
  with the resampling bias removed; an interval for E[FD_N].
* ``subsampling``: m = N/2 out of N without replacement, sqrt(N) rate (Politis & Romano).
* ``halfsample_debiased``: delete-d jackknife: half-samples (m = N/2, without replacement) estimate the bias
  as (mean t_m - t) * m/(N-m) (exact when bias ~ 1/N) and, with the finite-population factor
  sqrt(m/(N-m)), the spread of t; the interval is the spread around the debiased estimate.
* ``fixed_n``: the same half-sample spread around the plain estimate t: an interval for E[FD_N], not for the
  population distance.

Measured (benchmarks/results/fvd_interval_coverage.md; 400-d Gaussians, power-law spectra, 95% nominal,
100 rounds, 150-200 trials at N <= 256):

* No method covers the *population* FD when the spectrum is heavy-tailed (lambda_i ~ 1/i): at N = 64-256 the
  bias is +285% to +130% of the FD, 40-45 standard deviations, and every method's coverage is 0%.
  ``halfsample_debiased`` only reaches 22/83/90% at N = 512/1024/2048. With a fast-decaying spectrum
  (lambda_i ~ 1/i^2) ``halfsample_debiased`` covers it 98/98/97% at N = 64/128/256 (``subsampling`` 94/90/93%,
  ``basic`` 99-100%, wider). ``bias_exponent`` tells the regimes apart: median 0.0 (heavy) vs 0.7-0.9 (fast) at
  N = 64-256, but single datasets scatter (-0.15..0.21 vs -0.04..1.55), so it is a hint, not a switch.
* ``fixed_n`` covers E[FD_N] 97-98% at N = 64-256 in both regimes (95% at 512, 83-97% at N >= 1024 with only
  20-30 trials). ``percentile`` (the shipped interval) covers E[FD_N] 0% (heavy) / 70-79% (fast); BC and BCa
  collapse to near-zero width when every bootstrap value exceeds the estimate.

The Fréchet distance is computed from square-root factors: with S_1 = R_1^T R_1 and S_2 = R_2^T R_2,
Tr sqrt(S_1 S_2) is the nuclear norm of R_1 R_2^T. For weighted subsets of at most d videos the factors are
the weighted, centred feature rows, and R_1 R_2^T comes from a precomputed Gram matrix (no d-dim work per
round); for larger subsets R is the Cholesky factor of the d x d covariance.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.linalg
from scipy.linalg import blas
from scipy.special import ndtr, ndtri

JACKKNIFE_POINTS = 32  # left-out videos per set for the BCa acceleration

METHODS = (
    "percentile",
    "bc",
    "bca",
    "basic",
    "recentered",
    "subsampling",
    "halfsample_debiased",
    "fixed_n",
)


# ---------------------------------------------------------------------------------------------------
# Weighted Fréchet distance with reuse across rounds


class FrechetResampler:
    """Fréchet distances of weighted sub-/re-samples of two fixed feature sets ``[N1, D]`` and ``[N2, D]``.

    Weights are per-video (summing to 1 in each set); bootstrap counts/N, half-sample indicators/m and
    leave-one-out weights are all such weights.
    """

    def __init__(self, real: np.ndarray, fake: np.ndarray):
        x = np.asarray(real, dtype=np.float64)
        y = np.asarray(fake, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
            raise ValueError(f"expected [N1, D] and [N2, D] features, got {x.shape} and {y.shape}")
        if len(x) < 2 or len(y) < 2:
            raise ValueError("need at least 2 videos in each set")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("features contain NaN/inf")
        # Centre each set once: weighted means are then small and 1/N covariances lose no digits.
        self.offset = x.mean(axis=0) - y.mean(axis=0)  # d
        self.x = x - x.mean(axis=0)  # n1 d
        self.y = y - y.mean(axis=0)  # n2 d
        self.d = x.shape[1]
        self.sq_x, self.sq_y = (self.x**2).sum(axis=1), (self.y**2).sum(axis=1)  # n1, n2
        self._kxy: np.ndarray | None = None

    def full_weights(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(self.x), 1 / len(self.x)), np.full(len(self.y), 1 / len(self.y))

    def fd(self, wx: np.ndarray, wy: np.ndarray) -> float:
        ix, iy = np.flatnonzero(wx), np.flatnonzero(wy)
        wx, wy = wx[ix], wy[iy]
        mx, my = wx @ self.x[ix], wy @ self.y[iy]  # d, d
        mean_term = float(((mx - my + self.offset) ** 2).sum())
        if len(ix) <= self.d and len(iy) <= self.d:
            tr_x = wx @ self.sq_x[ix] - mx @ mx
            tr_y = wy @ self.sq_y[iy] - my @ my
            return mean_term + float(tr_x + tr_y) - 2 * self._tr_sqrt_gram(ix, wx, iy, wy, mx, my)
        sx, sy = _cov_upper(self.x[ix], wx, mx), _cov_upper(self.y[iy], wy, my)
        return mean_term + float(np.trace(sx) + np.trace(sy)) - 2 * _tr_sqrt_dspace(sx, sy)

    def _tr_sqrt_gram(
        self, ix: np.ndarray, wx: np.ndarray, iy: np.ndarray, wy: np.ndarray, mx: np.ndarray, my: np.ndarray
    ) -> float:
        # Row factors R_x = sqrt(w_i) (x_i - mx): R_x R_y^T is the centred cross Gram, no d-dim work.
        if self._kxy is None:  # computed once, reused by every round with at most d videos per set
            self._kxy = self.x @ self.y.T  # n1 n2
        k = self._kxy[np.ix_(ix, iy)]  # kx ky
        c = k - (k @ wy)[:, None] - (wx @ k)[None, :] + mx @ my  # (x_i - mx).(y_j - my)
        return _nuclear_norm(np.sqrt(wx)[:, None] * c * np.sqrt(wy)[None, :])


def _cov_upper(x: np.ndarray, w: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Weighted covariance sum_i w_i x_i x_i^T - mu mu^T (rows already centred, so no cancellation)."""
    return (x * w[:, None]).T @ x - np.outer(mu, mu)  # d d


def _tr_sqrt_dspace(sx: np.ndarray, sy: np.ndarray) -> float:
    """Tr sqrt(S_x S_y) = sum sqrt(eig(U S_y U^T)) with S_x = U^T U (Cholesky, upper triangles read)."""
    try:
        u = scipy.linalg.cholesky(sx, lower=False, check_finite=False)
        g = blas.dtrmm(1.0, u, blas.dsymm(1.0, sy, u, side=1), side=1, trans_a=1)  # U S_y U^T
    except np.linalg.LinAlgError:  # singular (collinear features): a symmetric square root always exists
        ev, vec = np.linalg.eigh(sx)
        u = (vec * np.sqrt(np.clip(ev, 0, None))).T
        g = u @ sy @ u.T
    return _sqrt_eig_sum(g)


def _sqrt_eig_sum(g: np.ndarray) -> float:
    """Sum of sqrt(eigenvalues) of a symmetric PSD matrix (rounding negatives to 0)."""
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(g), 0, None)).sum())


def _nuclear_norm(m: np.ndarray) -> float:
    # Sum of singular values via the smaller Gram matrix: eigvalsh is several times faster than an SVD.
    return _sqrt_eig_sum(m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m)


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FD of two feature sets (biased covariance), the same value as fvd.fvd_from_features (eig method)."""
    r = FrechetResampler(real, fake)
    return r.fd(*r.full_weights())


# ---------------------------------------------------------------------------------------------------
# Replicates


def bootstrap_replicates(resampler: FrechetResampler, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """FDs of ``rounds`` bootstrap resamples (both sets with replacement, same sizes)."""
    n1, n2 = len(resampler.x), len(resampler.y)
    out = np.empty(rounds)
    for b in range(rounds):
        wx = np.bincount(rng.integers(0, n1, n1), minlength=n1) / n1
        wy = np.bincount(rng.integers(0, n2, n2), minlength=n2) / n2
        out[b] = resampler.fd(wx, wy)
    return out


# Halves of fewer than 2 videos have no covariance, and m = N/2 must stay below N.
MIN_HALFSAMPLE_N = 4


def subsample_sizes(n1: int, n2: int) -> tuple[int, int]:
    return max(2, n1 // 2), max(2, n2 // 2)


def halfsample_replicates(resampler: FrechetResampler, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """FDs of ``rounds`` half-samples (m = N/2 of each set, without replacement)."""
    n1, n2 = len(resampler.x), len(resampler.y)
    m1, m2 = subsample_sizes(n1, n2)
    out = np.empty(rounds)
    for b in range(rounds):
        wx = np.zeros(n1)
        wx[rng.permutation(n1)[:m1]] = 1 / m1
        wy = np.zeros(n2)
        wy[rng.permutation(n2)[:m2]] = 1 / m2
        out[b] = resampler.fd(wx, wy)
    return out


def jackknife_acceleration(
    resampler: FrechetResampler, rng: np.random.Generator, points: int = JACKKNIFE_POINTS
) -> float:
    """BCa acceleration a = sum U^3 / (6 (sum U^2)^1.5) from leave-one-out values, two-sample form.

    U_i = mean(t_(.)) - t_(i) per set, moments divided by n^3 and n^2 (Efron & Tibshirani 1993, ch. 14.3).
    With more than ``points`` videos in a set, a random subset of ``points`` is left out and its moments are
    scaled up to the whole set (the skewness is a moment ratio; a subset estimates it without bias in the
    moments, at the cost of noise). A full jackknife (points >= N) is exact.
    """
    sums3, sums2 = 0.0, 0.0
    for role in ("x", "y"):
        n = len(getattr(resampler, role))
        chosen = np.arange(n) if points >= n else rng.choice(n, size=points, replace=False)
        n_other = len(resampler.y if role == "x" else resampler.x)
        other = np.full(n_other, 1 / n_other)
        vals = np.empty(len(chosen))
        for k, i in enumerate(chosen):
            w = np.full(n, 1 / (n - 1))
            w[i] = 0
            vals[k] = resampler.fd(w, other) if role == "x" else resampler.fd(other, w)
        u = vals.mean() - vals
        scale = n / len(chosen)  # subset sums -> whole-set sums
        sums3 += scale * (u**3).sum() / n**3
        sums2 += scale * (u**2).sum() / n**2
    return float(sums3 / (6 * sums2**1.5)) if sums2 > 0 else 0.0


# ---------------------------------------------------------------------------------------------------
# Intervals from replicates (pure functions, shared by the public methods and the benchmark)


def _alphas(confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = (1 - confidence) / 2
    return a, 1 - a


def percentile_interval(boot: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    lo, hi = _alphas(confidence)
    q = np.percentile(boot, [100 * lo, 100 * hi])
    return float(q[0]), float(q[1])


def bias_correction_z0(theta: float, boot: np.ndarray) -> float:
    """z0 = Phi^-1(share of bootstrap values below t, ties half), clipped to [1/2R, 1 - 1/2R]."""
    r = len(boot)
    p0 = (np.sum(boot < theta) + 0.5 * np.sum(boot == theta)) / r
    return float(ndtri(np.clip(p0, 0.5 / r, 1 - 0.5 / r)))


def bca_interval(
    theta: float, boot: np.ndarray, accel: float = 0.0, confidence: float = 0.95
) -> tuple[float, float]:
    """BCa interval; ``accel=0`` gives the BC interval, and z0 = 0 as well gives the percentile interval."""
    z0 = bias_correction_z0(theta, boot)
    out = []
    for alpha in _alphas(confidence):
        z = ndtri(alpha)
        adj = ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
        out.append(float(np.percentile(boot, 100 * adj)))
    return out[0], out[1]


def basic_interval(theta: float, boot: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    lo, hi = percentile_interval(boot, confidence)
    return 2 * theta - hi, 2 * theta - lo


def recentered_interval(theta: float, boot: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    lo, hi = percentile_interval(boot - boot.mean(), confidence)
    return theta + lo, theta + hi


def subsampling_interval(
    theta: float, sub: np.ndarray, n: int, m: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Politis-Romano: quantiles of sqrt(m)(t_m - t) stand in for those of sqrt(n)(t - FD)."""
    lo, hi = percentile_interval(sub, confidence)
    s = np.sqrt(m / n)
    return theta - s * (hi - theta), theta - s * (lo - theta)


def halfsample_bias(theta: float, sub: np.ndarray, n: int, m: int) -> float:
    """Delete-d jackknife bias (mean t_m - t) * m/(n - m); exact for a bias c/N."""
    return float((sub.mean() - theta) * m / (n - m))


def halfsample_spread(sub: np.ndarray, n: int, m: int, confidence: float = 0.95) -> tuple[float, float]:
    """Quantiles of t - E t: half-sample deviations times sqrt(m/(n-m)) (finite-population factor)."""
    lo, hi = percentile_interval(sub - sub.mean(), confidence)
    s = np.sqrt(m / (n - m))
    return s * lo, s * hi


def halfsample_debiased_interval(
    theta: float, sub: np.ndarray, n: int, m: int, confidence: float = 0.95
) -> tuple[float, float]:
    centre = theta - halfsample_bias(theta, sub, n, m)
    lo, hi = halfsample_spread(sub, n, m, confidence)
    return centre + lo, centre + hi


def fixed_n_interval(
    theta: float, sub: np.ndarray, n: int, m: int, confidence: float = 0.95
) -> tuple[float, float]:
    lo, hi = halfsample_spread(sub, n, m, confidence)
    return theta + lo, theta + hi


# ---------------------------------------------------------------------------------------------------
# Public methods: fn(real, fake, rounds, seed, confidence) -> (lo, hi)


def _setup(
    real: np.ndarray, fake: np.ndarray, rounds: int, seed: int
) -> tuple[FrechetResampler, float, np.random.Generator]:
    if rounds < 2:
        raise ValueError(f"need at least 2 rounds, got {rounds}")
    r = FrechetResampler(real, fake)
    theta = r.fd(*r.full_weights())
    return r, theta, np.random.default_rng(seed)


def percentile(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
):
    """Percentile bootstrap (the interval pvdm reported before this module)."""
    r, _, rng = _setup(real, fake, rounds, seed)
    return percentile_interval(bootstrap_replicates(r, rounds, rng), confidence)


def bc(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Bias-corrected percentile bootstrap."""
    r, theta, rng = _setup(real, fake, rounds, seed)
    return bca_interval(theta, bootstrap_replicates(r, rounds, rng), 0.0, confidence)


def bca(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """BCa bootstrap; acceleration from a subsampled two-sample jackknife."""
    r, theta, rng = _setup(real, fake, rounds, seed)
    boot = bootstrap_replicates(r, rounds, rng)
    return bca_interval(theta, boot, jackknife_acceleration(r, rng), confidence)


def basic(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Basic (reverse percentile) bootstrap interval."""
    r, theta, rng = _setup(real, fake, rounds, seed)
    return basic_interval(theta, bootstrap_replicates(r, rounds, rng), confidence)


def recentered(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
):
    """Bootstrap spread around the estimate (resampling bias removed): an interval for E[FD_N]."""
    r, theta, rng = _setup(real, fake, rounds, seed)
    return recentered_interval(theta, bootstrap_replicates(r, rounds, rng), confidence)


def _halfsample(interval: Callable[..., tuple[float, float]], real: np.ndarray, fake: np.ndarray, rounds: int, seed: int,
                confidence: float) -> tuple[float, float]:
    """An interval from half-sample replicates (m = N/2 videos of each set, without replacement)."""
    r, theta, rng = _setup(real, fake, rounds, seed)
    m, _ = subsample_sizes(len(r.x), len(r.y))
    return interval(theta, halfsample_replicates(r, rounds, rng), len(r.x), m, confidence)


def subsampling(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
):
    """m-out-of-n subsampling without replacement (m = N/2), sqrt(N) rate."""
    return _halfsample(subsampling_interval, real, fake, rounds, seed, confidence)


def halfsample_debiased(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Delete-d jackknife: half-sample bias correction and spread (for the population distance)."""
    return _halfsample(halfsample_debiased_interval, real, fake, rounds, seed, confidence)


def fixed_n(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Half-sample spread around the estimate: an interval for E[FD_N] at this N, not the population FD."""
    if min(len(real), len(fake)) < MIN_HALFSAMPLE_N:
        raise ValueError(f"the half-sample interval needs at least {MIN_HALFSAMPLE_N} videos per set, "
                         f"got {len(real)} real / {len(fake)} fake")
    return _halfsample(fixed_n_interval, real, fake, rounds, seed, confidence)


INTERVALS = {
    "percentile": percentile,
    "bc": bc,
    "bca": bca,
    "basic": basic,
    "recentered": recentered,
    "subsampling": subsampling,
    "halfsample_debiased": halfsample_debiased,
    "fixed_n": fixed_n,
}


def expected_bias(
    real: np.ndarray, fake: np.ndarray, rounds: int = 100, seed: int = 0, method: str = "halfsample"
) -> float:
    """Estimate E[FD_N] - FD (the finite-N bias of the estimate at the given set sizes).

    ``halfsample``: delete-d jackknife (assumes bias ~ 1/N); ``bootstrap``: mean of bootstrap FDs minus
    the estimate. Both are accurate once N is well above the effective rank of the covariances and
    underestimate the bias when N <= d (see the benchmark), where no resampling estimate is reliable.
    """
    r, theta, rng = _setup(real, fake, rounds, seed)
    if method == "bootstrap":
        return float(bootstrap_replicates(r, rounds, rng).mean() - theta)
    if method == "halfsample":
        m, _ = subsample_sizes(len(r.x), len(r.y))
        return halfsample_bias(theta, halfsample_replicates(r, rounds, rng), len(r.x), m)
    raise ValueError(f"unknown bias method '{method}'; choose 'halfsample' or 'bootstrap'")


def bias_exponent(real: np.ndarray, fake: np.ndarray, rounds: int = 50, seed: int = 0) -> float:
    """beta in bias(N) ~ N^-beta, from half- and quarter-samples: log2((t_N/4 - t_N/2) / (t_N/2 - t_N)).

    A regime diagnostic. beta near 1: the bias falls like 1/N, the regime where ``halfsample_debiased``
    covered the population FD in the benchmark. beta near 0: the bias has saturated (N far below the effective
    rank of the covariances) and only E[FD_N] can be given an interval. NaN when the means are not ordered.
    """
    r, theta, rng = _setup(real, fake, rounds, seed)
    n1, n2 = len(r.x), len(r.y)
    means = []
    for frac in (2, 4):
        m1, m2 = max(2, n1 // frac), max(2, n2 // frac)
        vals = []
        for _ in range(rounds):
            wx, wy = np.zeros(n1), np.zeros(n2)
            wx[rng.permutation(n1)[:m1]] = 1 / m1
            wy[rng.permutation(n2)[:m2]] = 1 / m2
            vals.append(r.fd(wx, wy))
        means.append(float(np.mean(vals)))
    half, quarter = means
    if not quarter > half > theta:
        return float("nan")
    return float(np.log2((quarter - half) / (half - theta)))
