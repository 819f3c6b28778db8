"""Figures for the report (matplotlib Figure on the Agg canvas, PNG written atomically).

- ``plot_training_curves``: losses vs step from one or more ``log.jsonl`` files, eval metrics (``eval/*``
  keys) on a second panel when present.
- ``plot_sample_strip``: the first K videos of a uint8 ``[N, T, H, W, C]`` array, every k-th frame.
- ``plot_fvd_checkpoints``: FVD (with its bootstrap interval and real-vs-real floor) across checkpoints.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pvdm.eval.records import FVDRecord
from pvdm.utils.io import atomic_path, read_log_rows

SKIP_KEYS = ("step", "time")
EVAL_PREFIX = "eval/"
DPI = 100
# "step_050000", "iter-1000", "ckpt5000", "it200" in a file or folder name
STEP_PATTERN = re.compile(r"(?:step|iter|ckpt|it)[_-]?(\d+)", re.IGNORECASE)


def _figure(figsize: tuple[float, float], dpi: int = DPI) -> Figure:
    # A bare Figure on the Agg canvas: no pyplot, so no global backend state and nothing to close.
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


# ---------------------------------------------------------------------------------------------------
# Training curves


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``log.jsonl`` sorted by step; a bad line is an error naming the file and line."""
    rows = read_log_rows(path)
    if not rows:
        raise ValueError(f"{path}: no log rows")
    return sorted(rows, key=lambda r: r["step"])


def _series(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], float(r[key])) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps), np.asarray(values)


def _numeric_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k not in SKIP_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys[k] = None
    return list(keys)


def stage_offsets(logs: Sequence[list[dict[str, Any]]]) -> list[int]:
    """Where each of several consecutive stages starts on a shared step axis: the sum of the last
    steps of the stages before it (the GAN stage's step 0 is stage 1's last step)."""
    starts, start = [], 0
    for rows in logs:
        starts.append(start)
        start += max((r["step"] for r in rows), default=0)
    return starts


def plot_training_curves(logs: Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                         out: str | os.PathLike, keys: Sequence[str] | None = None, logy: bool = False,
                         title: str | None = None, consecutive: bool = False) -> Path:
    """Losses vs step (top panel) and each ``eval/*`` metric vs step (one panel per metric) for each log.

    ``logs`` is a list of paths (labelled by their folder) or a ``{label: path}`` mapping; ``keys``
    restricts the plotted series (default: every numeric key). ``logy`` puts the loss panel on a log
    scale (only keys whose values are all positive are drawn then). ``consecutive``: the logs are
    stages run in sequence, so each one's steps start where the previous log ended (a dashed line
    marks the boundary); otherwise all logs share step 0.
    """
    items = list(logs.items()) if isinstance(logs, Mapping) else [(Path(p).parent.name or str(p), p) for p in logs]
    if not items:
        raise ValueError("no log files given")
    data = [(label, read_log(path), path) for label, path in items]
    starts = stage_offsets([rows for _, rows, _ in data]) if consecutive else [0] * len(data)
    offsets = {label: start for (label, _, _), start in zip(data, starts, strict=True)}
    boundaries = [(start, label) for (label, _, _), start in zip(data, starts, strict=True)] if consecutive else []
    train_keys: dict[str, list[str]] = {}
    eval_keys: list[str] = []  # one panel each: eval metrics have unrelated scales (PSNR ~25, LPIPS ~0.2)
    for label, rows, path in data:
        available = _numeric_keys(rows)
        chosen = available if keys is None else [k for k in keys if k in available]
        if keys is not None and not chosen:
            raise ValueError(f"{path}: none of the keys {list(keys)} is in the log (it has {available})")
        train_keys[label] = [k for k in chosen if not k.startswith(EVAL_PREFIX)]
        eval_keys += [k for k in chosen if k.startswith(EVAL_PREFIX) and k not in eval_keys]
    panels = [None, *eval_keys]  # None: the loss panel
    fig = _figure((8, 3.2 + 2.2 * len(eval_keys)))
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True,
                        gridspec_kw={"height_ratios": [1.5] + [1] * len(eval_keys)})
    many = len(data) > 1
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        for label, rows, _ in data:
            for k in train_keys[label] if panel is None else [panel]:
                steps, values = _series(rows, k)
                if len(steps) == 0 or (logy and panel is None and (values <= 0).any()):
                    continue
                steps = steps + offsets[label]
                style = "-" if panel is None and len(steps) >= 20 else "o-"
                ax.plot(steps, values, style, ms=3, lw=1, label=f"{label}: {k}" if many else k)
        for x, _ in boundaries[1:]:
            ax.axvline(x, color="0.5", ls="--", lw=0.8)
        if logy and panel is None:
            ax.set_yscale("log")
        ax.set_ylabel("loss" if panel is None else panel.removeprefix(EVAL_PREFIX))
        ax.grid(alpha=0.3)
        if ax.lines and (panel is None or many):
            ax.legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("training step" + (" (stages in sequence: " + ", then ".join(
        label for _, label in boundaries) + ")" if consecutive else ""))
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------------
# Sample strip


def strip_image(videos: np.ndarray, num_videos: int = 4, every: int = 2, max_frames: int | None = None,
                pad: int = 2) -> np.ndarray:
    """uint8 ``# n t h w c`` -> one image ``# H W 3``: a row per video, every ``every``-th frame across."""
    videos = np.asarray(videos)
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 videos [N, T, H, W, 1 or 3], got {videos.dtype} {videos.shape}")
    if num_videos < 1 or every < 1:
        raise ValueError(f"num_videos and every must be >= 1, got {num_videos}, {every}")
    clips = videos[:num_videos, ::every]  # k t' h w c
    if max_frames is not None:
        clips = clips[:, :max_frames]
    if clips.shape[-1] == 1:
        clips = np.repeat(clips, 3, axis=-1)
    k, t, h, w, _ = clips.shape
    img = np.full((k * (h + pad) + pad, t * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(k):
        for j in range(t):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            img[y:y + h, x:x + w] = clips[i, j]
    return img


def plot_sample_strip(videos: np.ndarray, out: str | os.PathLike, num_videos: int = 4, every: int = 2,
                      max_frames: int | None = None, title: str | None = None) -> Path:
    """PNG of ``strip_image`` at its native pixel size (one screen pixel per video pixel), optional title on top."""
    img = strip_image(videos, num_videos, every, max_frames)
    h, w = img.shape[:2]
    top = 0.3 if title else 0.0
    fig = _figure((w / DPI, h / DPI + top))
    ax = fig.add_axes((0, 0, 1, h / (h + top * DPI)))
    ax.imshow(img, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 * top)
    return _save(fig, out)


def plot_comparison(blocks: Sequence[tuple[str, np.ndarray]], out: str | os.PathLike, every: int = 2,
                    max_frames: int | None = None, title: str | None = None, scale: int = 1) -> Path:
    """PNG of labelled strips one above the other (e.g. real, reconstructed, generated): each block is
    ``(label, uint8 # n t h w c)``, drawn as ``strip_image`` with each video pixel a ``scale`` x ``scale``
    square (small clips stay readable), its label on the left."""
    if not blocks:
        raise ValueError("plot_comparison needs at least one (label, videos) block")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    imgs = [strip_image(v, len(v), every, max_frames).repeat(scale, axis=0).repeat(scale, axis=1) for _, v in blocks]
    width = max(i.shape[1] for i in imgs)
    label_w, gap, top = 1.1, 0.12, 0.3 if title else 0.0  # inches
    heights = [i.shape[0] / DPI for i in imgs]
    total_h = sum(heights) + gap * (len(imgs) - 1) + top
    total_w = width / DPI + label_w
    fig = _figure((total_w, total_h))
    y = total_h - top
    for (label, _), img, h in zip(blocks, imgs, heights, strict=True):
        y -= h
        ax = fig.add_axes((label_w / total_w, y / total_h, img.shape[1] / DPI / total_w, h / total_h))
        ax.imshow(img, interpolation="nearest")
        ax.set_axis_off()
        fig.text(0.5 * label_w / total_w, (y + h / 2) / total_h, label, ha="center", va="center", fontsize=8)
        y -= gap
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.5 * top / total_h, va="center")
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------------
# FVD across checkpoints


def metric_step(metric: FVDRecord, path: str | os.PathLike) -> int:
    """Training step of the checkpoint an FVD file evaluates: from its protocol card, or its name."""
    for key in ("step", "train_step", "checkpoint_step"):
        v = metric.protocol.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    path = Path(path)
    for name in (path.stem, path.parent.name):
        found = STEP_PATTERN.findall(name)
        if found:
            return int(found[-1])
    raise ValueError(f"{path}: no training step in its protocol card (protocol.step) or its name "
                     f"(e.g. fvd16_step050000.json)")


def plot_fvd_checkpoints(metric_files: Sequence[str | os.PathLike], out: str | os.PathLike,
                         title: str | None = None, logy: bool = False) -> Path:
    """FVD vs training step, one line per metric (fvd16 / fvd128 ...), interval as error bars, floor dashed."""
    if len(metric_files) < 1:
        raise ValueError("no metric files given")
    series: dict[str, list[tuple[int, FVDRecord]]] = {}
    for path in metric_files:
        m = FVDRecord.read(path)
        frames = m.protocol.get("frames")
        name = f"FVD{frames}" if frames else m.metric
        series.setdefault(name, []).append((metric_step(m, path), m))
    fig = _figure((7, 4))
    ax = fig.subplots()
    for i, (name, pts) in enumerate(sorted(series.items(), key=lambda kv: (len(kv[0]), kv[0]))):  # FVD16 first
        pts.sort(key=lambda p: p[0])
        steps = np.array([s for s, _ in pts])
        values = np.array([m.value for _, m in pts])
        color = f"C{i}"
        ivs = [m.interval95 for _, m in pts]
        if all(iv is not None for iv in ivs):
            err = np.abs(np.array([[v - iv[0], iv[1] - v] for v, iv in zip(values, ivs, strict=True)]).T)
            ax.errorbar(steps, values, yerr=err, fmt="o-", color=color, capsize=3, label=f"{name} (95% CI)")
        else:
            ax.plot(steps, values, "o-", color=color, label=name)
        floors = [m.real_floor.value for _, m in pts if m.real_floor is not None]
        if floors:
            ax.axhline(float(np.mean(floors)), ls="--", lw=1, color=color, label=f"{name} real-vs-real floor")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("FVD (lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, out)
