"""Videos for people: grids of clips written as mp4 (PyAV, H.264) and gif (Pillow)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

from pvdm.utils.io import atomic_path


def video_grid(videos: np.ndarray, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 ``# n t h w c`` -> one video ``# t H W c`` with the clips tiled row by row."""
    n, t, h, w, c = videos.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.full((t, nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, y : y + h, x : x + w] = videos[i]
    return grid


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> None:
    """uint8 ``# t h w c`` -> H.264 mp4 (sides padded to even numbers, as yuv420p needs)."""
    t, h, w, _ = frames.shape
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    with atomic_path(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.options = {"crf": "18"}
            for f in frames:
                for packet in stream.encode(
                    av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                ):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8) -> None:
    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path, suffix=".gif") as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )


def write_grid(videos: np.ndarray, stem: str | Path, ncol: int | None = None, fps: int = 8) -> list[Path]:
    """Write ``stem.mp4`` and ``stem.gif`` of a grid of clips; returns both paths."""
    grid = video_grid(videos, ncol)
    stem = Path(stem)
    paths = [stem.with_suffix(".mp4"), stem.with_suffix(".gif")]
    write_mp4(grid, paths[0], fps)
    write_gif(grid, paths[1], fps)
    return paths
