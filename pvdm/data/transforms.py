"""Frame preprocessing: centre square crop (or padding to a square), then resize to the configured
resolution.

The default filter is the original PVDM's: bilinear, half-pixel centres (``align_corners=False``),
no antialiasing. ``area`` (box average; better for strong downscaling) and ``bicubic`` are options.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_FILTERS = ("bilinear", "bilinear_antialias", "bicubic", "area")


def resize(frames: np.ndarray, size: tuple[int, int], resize_filter: str = "bilinear") -> np.ndarray:
    """uint8 ``# t h w c`` -> uint8 ``# t size[0] size[1] c`` with one of RESIZE_FILTERS."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter={resize_filter!r}; choose one of {RESIZE_FILTERS}")
    if frames.shape[1:3] == tuple(size):
        return np.ascontiguousarray(frames)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # t c h w
    if resize_filter == "area":
        x = F.interpolate(x, size=size, mode="area")
    else:
        mode = "bicubic" if resize_filter == "bicubic" else "bilinear"
        x = F.interpolate(
            x, size=size, mode=mode, align_corners=False, antialias=resize_filter == "bilinear_antialias"
        )
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def center_crop_resize(frames: np.ndarray, resolution: int, resize_filter: str = "bilinear") -> np.ndarray:
    """uint8 ``# t h w c`` -> uint8 ``# t r r c`` (square centre crop, then resize)."""
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter={resize_filter!r}; choose one of {RESIZE_FILTERS}")
    t, h, w, c = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize(frames[:, top : top + side, left : left + side], (resolution, resolution), resize_filter)


def pad_resize(frames: np.ndarray, resolution: int, resize_filter: str = "bilinear") -> np.ndarray:
    """uint8 ``# t h w c`` -> uint8 ``# t r r c``: the whole frame, longer side resized to ``r``,
    centred on black (letterbox / pillarbox), so nothing is cut away."""
    t, h, w, c = frames.shape
    scale = resolution / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    out = np.zeros((t, resolution, resolution, c), dtype=np.uint8)
    top, left = (resolution - new_h) // 2, (resolution - new_w) // 2
    out[:, top : top + new_h, left : left + new_w] = resize(frames, (new_h, new_w), resize_filter)
    return out


FITS = {"center": center_crop_resize, "pad": pad_resize}
