"""PSNR, SSIM and R-FVD on video pairs."""

import math

import numpy as np
import pytest
import scipy.ndimage
import torch

from pvdm.eval import video_metrics as recon

pytestmark = pytest.mark.usefixtures("isolated_weights_dir")


def video(seed: int, shape=(2, 3, 4, 24, 24)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_identical_is_inf_and_offset_is_analytic():
    x = video(0) * 0.5
    assert torch.isinf(recon.psnr(x, x)).all()
    c = 0.1  # constant offset on [-1, 1] data: MSE = c^2, data range 2
    np.testing.assert_allclose(recon.psnr(x, x + c).numpy(), 10 * math.log10(4 / c**2), rtol=1e-6)
    u8 = torch.randint(0, 200, (2, 3, 4, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(recon.psnr(u8, u8 + 5).numpy(), 10 * math.log10(255**2 / 25), rtol=1e-9)
    # Per video: only the second video differs.
    y = x.clone()
    y[1] += 0.2
    out = recon.psnr(x, y)
    assert torch.isinf(out[0]) and out[1].item() == pytest.approx(10 * math.log10(4 / 0.04))
    # PSNR on [-1, 1] with range 2 equals PSNR on [0, 1] with range 1 (PVDM's convention).
    z = video(2)
    assert recon.psnr(x, z) == pytest.approx(recon.psnr((x + 1) / 2, (z + 1) / 2, data_range=1.0))


def test_ssim_identical_is_one_and_constant_frames_are_analytic():
    x = video(0)
    np.testing.assert_allclose(recon.ssim(x, x).numpy(), 1.0, atol=1e-12)
    a, b = 0.2, -0.3  # constant frames: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    c1 = (0.01 * 2) ** 2
    xa, xb = torch.full((1, 3, 2, 16, 16), a), torch.full((1, 3, 2, 16, 16), b)
    assert recon.ssim(xa, xb).item() == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)


def reference_ssim_frame(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Independent SSIM of one 2-D frame: scipy Gaussian filter (sigma 1.5, 11 taps), valid region only."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(z):
        return scipy.ndimage.gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))).mean())


def test_ssim_matches_independent_implementation():
    x = video(0)
    y = (x + 0.3 * video(1)).clamp(-1, 1)
    out = recon.ssim(x, y)
    xn, yn = x.double().numpy(), y.double().numpy()
    for i in range(x.shape[0]):
        frames = [reference_ssim_frame(xn[i, c, t], yn[i, c, t], 2.0) for c in range(3) for t in range(4)]
        assert out[i].item() == pytest.approx(np.mean(frames), rel=1e-9)
    assert 0 < out.min() and out.max() < 1


def test_ssim_and_psnr_fall_with_noise():
    x = video(0)
    noise = video(1)
    s = [recon.ssim(x, x + k * noise).mean().item() for k in (0.01, 0.1, 0.5)]
    p = [recon.psnr(x, x + k * noise).mean().item() for k in (0.01, 0.1, 0.5)]
    assert s[0] > s[1] > s[2] and p[0] > p[1] > p[2]


def test_shape_and_dtype_errors():
    x = video(0)
    with pytest.raises(ValueError, match="same shape"):
        recon.psnr(x, x[:, :, :2])
    with pytest.raises(ValueError, match="dtypes"):
        recon.ssim(x, x.float().to(torch.float64))
    with pytest.raises(ValueError, match="11x11"):
        recon.ssim(x[..., :8, :8], x[..., :8, :8])


def test_rfvd_zero_for_identical_and_positive_for_degraded_reconstructions():
    from pvdm.eval.fvd import evaluate_fvd

    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, size=(4, 16, 32, 32, 3), dtype=np.uint8)
    degraded = (real // 64 * 64).astype(np.uint8)  # coarse quantisation
    kw = dict(num_videos=4, frames=16, selector="first_n_from_start", bootstrap_rounds=0, device="cpu")
    same = evaluate_fvd(real, real, **kw).value
    worse = evaluate_fvd(real, degraded, **kw).value
    assert abs(same) < 1e-6 * worse
    assert worse > 0
