"""Quality metrics of video pairs: PSNR, SSIM and LPIPS, one value per video.

Videos are ``[B, 3, T, H, W]`` tensors, either float in [-1, 1] (data range 2; PSNR then equals PVDM's
PSNR on the [0, 1] scale) or uint8 in [0, 255] (data range 255). Every function returns one value per video.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _prepare(
    x: torch.Tensor, y: torch.Tensor, data_range: float | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(
            f"expected two videos [B, C, T, H, W] of the same shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if x.dtype != y.dtype:
        raise ValueError(f"videos have different dtypes: {x.dtype} and {y.dtype}")
    if data_range is None:
        data_range = 255.0 if x.dtype == torch.uint8 else 2.0
    return x.double(), y.double(), float(data_range)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Per-video PSNR ``[B]`` in dB over all pixels, channels and frames; inf for identical videos.

    ``data_range`` defaults to 2 for float input in [-1, 1] and 255 for uint8.
    """
    x, y, r = _prepare(x, y, data_range)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)  # b
    return 10 * torch.log10(r**2 / mse)  # mse 0 -> inf


@functools.lru_cache(maxsize=4)
def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float | None = None) -> torch.Tensor:
    """Per-video SSIM ``[B]``: Wang et al. 2004 per frame and channel, averaged over frames.

    Gaussian window 11x11 with sigma 1.5 applied as a valid (unpadded) filter, K1 = 0.01, K2 = 0.03.
    Frames must be at least 11x11.
    """
    x, y, r = _prepare(x, y, data_range)
    b, c, t, h, w = x.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {h}x{w}")
    c1, c2 = (SSIM_K1 * r) ** 2, (SSIM_K2 * r) ** 2
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(x.device)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable valid filter on (b c t) 1 h w
        z = F.conv2d(z, g.view(1, 1, -1, 1))
        return F.conv2d(z, g.view(1, 1, 1, -1))

    x = x.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    y = y.permute(0, 2, 1, 3, 4).reshape(b * t * c, 1, h, w)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.reshape(b, t * c, -1).mean(dim=(1, 2))  # mean over frames, channels and pixels


@functools.lru_cache(maxsize=2)
def _lpips_model(net: str) -> torch.nn.Module:
    from pvdm.losses.lpips import LPIPS  # imported lazily: evaluation works without the LPIPS weights

    return LPIPS(net=net).eval()


def lpips_video(x: torch.Tensor, y: torch.Tensor, net: str = "vgg", batch_frames: int = 64) -> torch.Tensor:
    """Per-video LPIPS ``[B]``: LPIPS of every frame pair (float videos in [-1, 1]), averaged over frames."""
    if x.shape != y.shape or x.ndim != 5 or not x.is_floating_point():
        raise ValueError(
            f"expected two float videos [B, 3, T, H, W] in [-1, 1], got {x.dtype} {tuple(x.shape)} "
            f"and {y.dtype} {tuple(y.shape)}"
        )
    model = _lpips_model(net).to(x.device)
    b, c, t, h, w = x.shape
    xf = x.transpose(1, 2).reshape(b * t, c, h, w)  # (b t) c h w
    yf = y.transpose(1, 2).reshape(b * t, c, h, w)
    with torch.no_grad():
        d = torch.cat(
            [
                model(xf[i : i + batch_frames], yf[i : i + batch_frames]).flatten()
                for i in range(0, b * t, batch_frames)
            ]
        )
    return d.reshape(b, t).mean(dim=1)
