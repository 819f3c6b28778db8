"""Shot boundaries from the change of colour content between consecutive frames.

The score of frame i is the mean absolute difference of its HSV pixels (PIL's conversion) and frame i-1's (hue on
OpenCV's 0-180 scale, saturation and value on 0-255), averaged over the three channels: the
measure of PySceneDetect's content detector (``ContentDetector``, default weights, no edges). A
cut starts a new shot at frame i when the score reaches the threshold (27, PySceneDetect's
default) and the current shot is at least ``min_frames`` long (15, its ``min_scene_len``).
Frames are subsampled to at most ``MAX_WIDTH`` pixels wide first, as PySceneDetect downscales.
tests/test_videos.py measures the agreement with PySceneDetect where it is installed.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DEFAULT_THRESHOLD = 27.0
DEFAULT_MIN_FRAMES = 15
MAX_WIDTH = 256


HUE_TO_OPENCV = 180.0 / 255.0  # PIL's hue is 0-255 for 0-360 degrees, OpenCV's 0-180


def small_hsv(frame: np.ndarray) -> np.ndarray:
    """HSV of a uint8 RGB ``# h w 3`` frame subsampled to at most MAX_WIDTH pixels wide, float32
    ``# h' w' 3`` with H on OpenCV's 0-180 scale and S, V on 0-255 (what the score compares)."""
    step = max(1, -(-frame.shape[1] // MAX_WIDTH))  # ceil(w / MAX_WIDTH)
    small = np.ascontiguousarray(frame[::step, ::step])
    hsv = np.asarray(Image.fromarray(small).convert("HSV"), dtype=np.float32)
    hsv[..., 0] *= HUE_TO_OPENCV
    return hsv


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
