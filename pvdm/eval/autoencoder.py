"""Reconstruction quality of an autoencoder on a clip store (the held-out split by default).

The original computed its "test" PSNR and R-FVD on the training loader; here the caller passes
the store, and the stage rules pass the held-out one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from pvdm.data.loader import to_model_range, to_uint8
from pvdm.data.store import ClipStore
from pvdm.eval.recon import lpips_video, psnr, ssim


@torch.no_grad()
def reconstruct(
    model: torch.nn.Module,
    store: ClipStore,
    num_videos: int,
    frames: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (real, reconstruction) uint8 ``# b t h w c`` batches for the first ``num_videos`` clips
    (the first ``frames`` frames of each)."""
    model.eval()
    n = min(num_videos, len(store))
    for start in range(0, n, batch_size):
        real = np.ascontiguousarray(store.clips[start : min(start + batch_size, n), :frames])
        x = to_model_range(torch.from_numpy(real).to(device))
        yield real, to_uint8(model(x))


def recon_metrics(
    model: torch.nn.Module,
    store: ClipStore,
    num_videos: int,
    frames: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    with_lpips: bool = True,
) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and LPIPS-VGG over the first ``num_videos`` clips of ``store``.

    Metrics are computed on the uint8-quantised reconstructions, what a user would save and view.
    """
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    for real, rec in reconstruct(model, store, num_videos, frames, batch_size, device):
        x = torch.from_numpy(real).permute(0, 4, 1, 2, 3)  # b c t h w uint8
        y = torch.from_numpy(rec).permute(0, 4, 1, 2, 3)
        scores["psnr"] += psnr(x, y).tolist()
        scores["ssim"] += ssim(x, y).tolist()
        if with_lpips:  # every frame, averaged per video
            x, y = (to_model_range(torch.from_numpy(v)).to(device) for v in (real, rec))
            scores["lpips"] += lpips_video(x, y).tolist()
    out = {k: float(np.mean(v)) for k, v in scores.items() if v}
    out["num_videos"] = min(num_videos, len(store))
    return out
