"""Interval methods for the Fréchet distance: exactness of the resampling engine, each method's maths, and a
coverage check of the shipped interval on Gaussians with a known answer."""

import numpy as np
import pytest
import scipy.linalg

from pvdm.eval import fvd
from pvdm.eval import intervals as iv

SHIPPED = "fixed_n"  # the pipeline's default interval; its target is E[FD_N] (see intervals.py)


def features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d) * np.linspace(2, 0.2, d)
    return rng.normal(size=(n, d)) @ mix * scale + shift


@pytest.mark.parametrize("n", [6, 40])  # 6 <= d: Gram path; 40 > d: d-space path
def test_engine_matches_fvd_module(n):
    # The Gram path squares singular values (eigvalsh of M M^T): ~1e-8 relative, far below any sampling noise.
    d = 12
    x, y = features(n, d, 1), features(n + 3, d, 2, scale=1.3, shift=0.4)
    assert iv.frechet_distance(x, y) == pytest.approx(fvd.fvd_from_features(x, y), rel=1e-7)
    # Bootstrap counts as weights == the duplicated rows themselves.
    rng = np.random.default_rng(3)
    ix, iy = rng.integers(0, len(x), len(x)), rng.integers(0, len(y), len(y))
    r = iv.FrechetResampler(x, y)
    got = r.fd(np.bincount(ix, minlength=len(x)) / len(x), np.bincount(iy, minlength=len(y)) / len(y))
    assert got == pytest.approx(fvd.fvd_from_features(x[ix], y[iy]), rel=1e-7)
    # Leave-one-out weights == the row removed.
    w = np.full(len(x), 1 / (len(x) - 1))
    w[2] = 0
    got = r.fd(w, np.full(len(y), 1 / len(y)))
    assert got == pytest.approx(fvd.fvd_from_features(np.delete(x, 2, axis=0), y), rel=1e-7)


def test_engine_survives_a_singular_covariance():
    x = features(40, 10, 1)
    x[:, 3] = x[:, 2]  # collinear features: Cholesky fails, the eigen square root takes over
    y = features(40, 10, 2, shift=0.2)
    assert iv.frechet_distance(x, y) == pytest.approx(fvd.fvd_from_features(x, y), rel=1e-6)


@pytest.mark.parametrize("name", list(iv.INTERVALS))
def test_methods_are_deterministic_and_ordered(name):
    x, y = features(30, 6, 1), features(30, 6, 2, scale=1.5, shift=0.5)
    fn = iv.INTERVALS[name]
    lo, hi = fn(x, y, rounds=40, seed=7)
    assert np.isfinite([lo, hi]).all() and lo <= hi
    assert fn(x, y, rounds=40, seed=7) == (lo, hi)
    assert fn(x, y, rounds=40, seed=8) != (lo, hi)
    lo90, hi90 = fn(x, y, rounds=40, seed=7, confidence=0.9)
    assert hi90 - lo90 <= hi - lo + 1e-9


def test_bc_reduces_to_percentile_when_the_median_is_the_estimate():
    theta = 10.0
    boot = theta + np.random.default_rng(0).normal(size=101)
    boot = theta + (boot - np.median(boot))  # 50 below, one equal, 50 above: z0 = 0
    assert iv.bias_correction_z0(theta, boot) == pytest.approx(0.0, abs=1e-12)
    assert iv.bca_interval(theta, boot, 0.0) == pytest.approx(iv.percentile_interval(boot), abs=1e-12)
    # BCa with zero acceleration is BC, also when z0 != 0.
    shifted = boot + 0.3
    assert iv.bca_interval(theta, shifted, 0.0) != pytest.approx(iv.percentile_interval(shifted))
    assert iv.bca_interval(theta, shifted, accel=0.0) == iv.bca_interval(theta, shifted)


def test_interval_formulas_on_constructed_replicates():
    theta = 100.0
    boot = theta + 20 + np.linspace(-5, 5, 11)  # bootstrap values biased +20 over the estimate
    lo, hi = iv.percentile_interval(boot, 0.8)
    assert iv.basic_interval(theta, boot, 0.8) == pytest.approx((2 * theta - hi, 2 * theta - lo))
    assert iv.recentered_interval(theta, boot, 0.8) == pytest.approx((theta + lo - 120, theta + hi - 120))
    # Half-samples of m = n/2: bias = mean shift (m/(n-m) = 1), spread unscaled.
    n, m = 64, 32
    sub = theta + 8 + np.linspace(-4, 4, 11)
    assert iv.halfsample_bias(theta, sub, n, m) == pytest.approx(8.0)
    slo, shi = iv.percentile_interval(sub, 0.8)
    assert iv.fixed_n_interval(theta, sub, n, m, 0.8) == pytest.approx((theta + slo - 108, theta + shi - 108))
    assert iv.halfsample_debiased_interval(theta, sub, n, m, 0.8) == pytest.approx(
        (theta - 8 + slo - 108, theta - 8 + shi - 108)
    )
    s = np.sqrt(m / n)  # Politis-Romano with the sqrt(n) rate
    assert iv.subsampling_interval(theta, sub, n, m, 0.8) == pytest.approx(
        (theta - s * (shi - theta), theta - s * (slo - theta))
    )
    with pytest.raises(ValueError, match="confidence"):
        iv.percentile_interval(boot, 1.5)


def test_jackknife_acceleration_full_and_subsampled():
    x, y = features(12, 4, 1), features(10, 4, 2, scale=2.0)
    r = iv.FrechetResampler(x, y)
    rng = np.random.default_rng(0)
    full = iv.jackknife_acceleration(r, rng, points=100)
    # Brute force from the definition.
    sums3 = sums2 = 0.0
    for a, b, first in ((x, y, True), (y, x, False)):
        vals = np.array(
            [
                fvd.fvd_from_features(np.delete(a, i, 0), b)
                if first
                else fvd.fvd_from_features(b, np.delete(a, i, 0))
                for i in range(len(a))
            ]
        )
        u = vals.mean() - vals
        sums3 += (u**3).sum() / len(a) ** 3
        sums2 += (u**2).sum() / len(a) ** 2
    assert full == pytest.approx(sums3 / (6 * sums2**1.5), rel=1e-6)
    sub = iv.jackknife_acceleration(r, np.random.default_rng(1), points=6)
    assert np.isfinite(sub) and abs(sub) < 1


def test_expected_bias_when_n_is_well_above_d():
    # d = 4, N = 400: the bias is ~1/N and the half-sample (delete-d jackknife) estimate is consistent.
    d, n = 4, 400
    sr, sf = np.diag([4.0, 2.0, 1.0, 0.5]), np.diag([2.0, 3.0, 0.5, 1.0])
    mu_f = np.array([0.5, 0, 0, 0])
    true = fvd.frechet_distance(np.zeros(d), sr, mu_f, sf)
    rng = np.random.default_rng(0)
    draws = [
        (rng.normal(size=(n, d)) @ np.sqrt(sr), rng.normal(size=(n, d)) @ np.sqrt(sf) + mu_f)
        for _ in range(300)
    ]
    actual = np.mean([iv.frechet_distance(a, b) for a, b in draws]) - true
    est = np.mean([iv.expected_bias(a, b, rounds=30, seed=i) for i, (a, b) in enumerate(draws[:40])])
    boot = np.mean(
        [iv.expected_bias(a, b, rounds=30, seed=i, method="bootstrap") for i, (a, b) in enumerate(draws[:40])]
    )
    assert actual > 0
    assert est == pytest.approx(actual, rel=0.35)
    assert boot == pytest.approx(actual, rel=0.35)
    with pytest.raises(ValueError, match="unknown bias method"):
        iv.expected_bias(*draws[0], method="nope")


# ---------------------------------------------------------------------------------------------------
# Coverage of the shipped interval (the benchmark's fast_decay population at N = 64, d = 400)


def _population(d: int = 400, alpha: float = 2.0, seed: int = 1):
    rng = np.random.default_rng(seed)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    lam *= 1000 / lam.sum()
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    u = q * np.sign(np.diag(r))
    lam_f = lam * np.exp(rng.normal(0, 0.3, d))
    skew = rng.standard_normal((d, d)) * 0.02
    u_f = scipy.linalg.expm(skew - skew.T) @ u
    mu_r = rng.normal(0, 1, d)
    shift = rng.standard_normal(d)
    mu_f = mu_r + shift * np.sqrt(60) / np.linalg.norm(shift)
    return (mu_r, u * np.sqrt(lam)), (mu_f, u_f * np.sqrt(lam_f))


def test_bias_exponent_separates_the_regimes():
    # Heavy-tailed spectrum at N = 64: the bias has saturated (exponent ~0); fast decay: ~1/N (exponent ~0.8).
    n = 64
    medians = {}
    for alpha in (1.0, 2.0):
        (mu_r, l_r), (mu_f, l_f) = _population(alpha=alpha)
        rng = np.random.default_rng(5)
        values = []
        for t in range(5):
            real = rng.standard_normal((n, len(mu_r))) @ l_r.T + mu_r
            fake = rng.standard_normal((n, len(mu_r))) @ l_f.T + mu_f
            values.append(iv.bias_exponent(real, fake, rounds=40, seed=t))
        medians[alpha] = float(np.nanmedian(values))
    assert medians[1.0] < 0.3 < 0.5 < medians[2.0]


def test_shipped_interval_covers_the_fixed_n_fd():
    """Fails when the shipped method's coverage of E[FD_N] at N = 64 leaves [90%, 99%] (150 trials, SE ~1.8)."""
    (mu_r, l_r), (mu_f, l_f) = _population()
    n, d = 64, len(mu_r)
    rng = np.random.default_rng(123)

    def draw():
        return rng.standard_normal((n, d)) @ l_r.T + mu_r, rng.standard_normal((n, d)) @ l_f.T + mu_f

    target = np.mean([iv.frechet_distance(*draw()) for _ in range(1000)])  # E[FD_64] to +-1.2 (sd ~38)
    fn = iv.INTERVALS[SHIPPED]
    hits = []
    for t in range(150):
        lo, hi = fn(*draw(), rounds=100, seed=t)
        hits.append(lo <= target <= hi)
    cov = float(np.mean(hits))
    assert 0.90 <= cov <= 0.99, f"{SHIPPED} coverage of E[FD_64] is {cov:.3f}"


def test_too_few_videos_for_halves_is_a_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 4 videos per set, got 3 real / 8 fake"):
        iv.fixed_n(rng.normal(size=(3, 5)), rng.normal(size=(8, 5)), rounds=10)
