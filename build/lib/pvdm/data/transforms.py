"""Frame preprocessing: centre square crop, then resize to the configured resolution.

The default filter is the original PVDM's: bilinear, half-pixel centres (``align_corners=False``),
no antialiasing. ``area`` (box average; better for strong downscaling) and ``bicubic`` are options.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_FILTERS = ("bilinear", "bilinear_antialias", "bicubic", "area")


def center_crop_resize(frames: np.ndarray, resolution: int, resize_filter: str = "bilinear") -> np.ndarray:
    """uint8 ``# t h w c`` -> uint8 ``# t r r c`` (square centre crop, then resize)."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter={resize_filter!r}; choose one of {RESIZE_FILTERS}")
    t, h, w, c = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frames = frames[:, top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # t c h w
    if resize_filter == "area":
        x = F.interpolate(x, size=(resolution, resolution), mode="area")
    else:
        mode = "bicubic" if resize_filter == "bicubic" else "bilinear"
        x = F.interpolate(
            x,
            size=(resolution, resolution),
            mode=mode,
            align_corners=False,
            antialias=resize_filter == "bilinear_antialias",
        )
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()
