"""Shot boundaries from the change of colour content between consecutive frames.

The score of frame i is the mean absolute difference of its HSV pixels and frame i-1's (hue on
OpenCV's 0-180 scale, saturation and value on 0-255), averaged over the three channels: the
measure of PySceneDetect's content detector (``ContentDetector``, default weights, no edges). A
cut starts a new shot at frame i when the score reaches the threshold (27, PySceneDetect's
default) and the current shot is at least ``min_frames`` long (15, its ``min_scene_len``).
Frames are subsampled to at most ``MAX_WIDTH`` pixels wide first, as PySceneDetect downscales.
tests/test_videos.py measures the agreement with PySceneDetect where it is installed.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 27.0
DEFAULT_MIN_FRAMES = 15
MAX_WIDTH = 256


def rgb_to_hsv(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB ``# h w 3`` -> float32 HSV ``# h w 3``: H in [0, 180), S and V in [0, 255] (OpenCV's scale)."""
    x = frame.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    spread = v - x.min(axis=-1)
    s = np.where(v > 0, 255.0 * spread / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(spread, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / safe, np.where(v == g, 120.0 + 60.0 * (b - r) / safe,
                                                          240.0 + 60.0 * (r - g) / safe))
    h = np.where(spread > 0, np.mod(h, 360.0), 0.0) / 2.0
    return np.stack([h, s, v], axis=-1).astype(np.float32)


def small_hsv(frame: np.ndarray) -> np.ndarray:
    """HSV of a frame subsampled to at most MAX_WIDTH pixels wide (what the score compares)."""
    step = max(1, -(-frame.shape[1] // MAX_WIDTH))  # ceil(w / MAX_WIDTH)
    return rgb_to_hsv(frame[::step, ::step])


def content_score(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute HSV difference of two ``small_hsv`` frames, averaged over H, S, V."""
    return float(np.abs(current - previous).mean())


def shots_from_scores(
    scores: list[float] | np.ndarray,
    num_frames: int,
    threshold: float = DEFAULT_THRESHOLD,
    min_frames: int = DEFAULT_MIN_FRAMES,
) -> list[tuple[int, int]]:
    """Shots ``[(first, end)]`` (end exclusive) of a video whose frame i >= 1 has ``scores[i - 1]``."""
    cuts, last = [], 0
    for i, score in enumerate(scores, start=1):
        if score >= threshold and i - last >= min_frames:
            cuts.append(i)
            last = i
    bounds = [0, *cuts, num_frames]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def detect_shots(
    frames: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_frames: int = DEFAULT_MIN_FRAMES
) -> list[tuple[int, int]]:
    """Shots of uint8 ``# t h w c`` frames (all in memory; the prepare stage scores while decoding)."""
    hsv = [small_hsv(f) for f in frames]
    scores = [content_score(a, b) for a, b in zip(hsv[:-1], hsv[1:], strict=True)]
    return shots_from_scores(scores, len(frames), threshold, min_frames)
