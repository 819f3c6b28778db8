"""Video Inception Score with the UCF-101 C3D, as StyleGAN-V's ``isv2048_ucf`` computes it.

StyleGAN-V (universome/stylegan-v@3fecd69 ``src/metrics/video_inception_score.py``, ``metric_utils.py``):
  2,048 generated videos, the first 16 frames of each, uint8 [B, C, T, H, W] into the C3D TorchScript
  (a reproduction of tgan2's ``C3DVersion1UCF101``), softmax probabilities stored as float32
  (``FeatureStats.append``); then ``np.random.RandomState(42).shuffle`` of the rows, 10 splits
  ``[i*N//10 : (i+1)*N//10]``, per split exp(mean_i KL(p_i || mean p)) in float32 with no epsilon,
  and the mean and the population std (ddof=0) over splits.

One deliberate difference: StyleGAN-V computes p*log(p) literally, so an exact zero probability (float32
softmax underflow) makes its score NaN; here 0*log(0) = 0. Every split without zeros is bit-identical.

TGANv2's own script differs (splits=1 repeated over 10 fresh sample sets, eps=1e-20, float64); that is not
what PVDM/StyleGAN-V tables report, so it is not implemented.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pvdm.eval import c3d
from pvdm.eval.records import ISRecord
from pvdm.utils.device import metric_numerics
from pvdm.utils.progress import Progress

log = logging.getLogger("pvdm.inception")


def inception_score(
    probs: np.ndarray, splits: int = 10, shuffle_seed: int | None = 42
) -> tuple[float, float]:
    """(mean, std) of exp(E KL(p(y|x) || p(y))) over ``splits`` splits, StyleGAN-V's computation.

    ``probs`` is ``[N, C]`` class probabilities; rows are shuffled with ``np.random.RandomState(shuffle_seed)``
    first (``None``: no shuffle). Computed in float32 as StyleGAN-V does; std is the population std.
    """
    p = np.array(probs, dtype=np.float32)  # a copy: the shuffle is in place
    if p.ndim != 2 or len(p) < splits or splits < 1:
        raise ValueError(
            f"need [N, C] probabilities with N >= splits >= 1, got shape {p.shape}, splits={splits}"
        )
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probabilities must be finite and non-negative")
    if np.abs(p.sum(axis=1) - 1).max() > 1e-3:
        raise ValueError(f"rows must sum to 1 (max deviation {np.abs(p.sum(axis=1) - 1).max():.3g})")
    if shuffle_seed is not None:
        np.random.RandomState(shuffle_seed).shuffle(p)
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        kl = np.where(part > 0, kl, np.float32(0))  # 0 log 0 = 0 (StyleGAN-V would give NaN here)
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def c3d_probabilities(
    videos: np.ndarray | Iterable[np.ndarray],
    model: c3d.C3D,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    mapping: str = "tgan2",
    total: int | None = None,
) -> np.ndarray:
    """UCF-101 class probabilities ``[N, 101]`` (float32) of uint8 clips ``[N, 16, H, W, 3]`` (or batches of them)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    batches = [videos] if isinstance(videos, np.ndarray) else videos
    total = len(videos) if isinstance(videos, np.ndarray) else total
    out: list[np.ndarray] = []
    # TF32 would move the logits; keep GPU results at float32 precision like the CPU ones.
    with metric_numerics(), Progress(total, "C3D probabilities") as bar, torch.inference_mode():
        for arr in batches:
            arr = np.asarray(arr)
            for i in range(0, len(arr), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(arr[i : i + batch_size])).to(device)
                logits = model(c3d.preprocess(x, model.mean, mapping))  # b 101
                out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
                bar.update(len(x))
    if not out:
        raise ValueError("no videos given")
    probs = np.concatenate(out).astype(np.float32)
    if not np.isfinite(probs).all():
        raise ValueError("C3D gave NaN/inf probabilities")
    return probs


def protocol_card(
    *,
    dataset: str | None,
    num_videos: int,
    frames: int,
    resolution: list[int] | tuple[int, ...] | None,
    splits: int,
    shuffle_seed: int | None,
    mapping: str,
    weights_path: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What an IS number means; stored in every metric file."""
    from pvdm.eval.fvd import code_version

    source = c3d.c3d_source_info(weights_path)
    card = {
        "metric": f"isv{num_videos}_ucf",
        "protocol": "isv2048_ucf (StyleGAN-V) / TGANv2 C3D",
        "dataset": dataset,
        "num_videos": num_videos,
        "frames": frames,
        "clip_selector": "first N videos, frames 0..T-1 (StyleGAN-V generated set)",
        "resolution": list(resolution) if resolution is not None else None,
        "preprocessing": {
            "input_mapping": "uint8 p -> (p-128)/128 -> x*128+128 = p (tgan2 data loader)"
            if mapping == "tgan2"
            else "uint8 p -> p/127.5-1 -> x*128+128 = p*256/255",
            "channels": "RGB -> BGR",
            "resize": {"size": c3d.SIZE, "mode": "bilinear", "align_corners": True, "antialias": False},
            "mean": f"minus {c3d.MEAN_NPZ}['mean'][:, :, 8:120, 8:120] (BGR)",
        },
        "classifier": "tgan2 C3DVersion1UCF101 (C3D fine-tuned on UCF-101), softmax over 101 classes",
        "c3d_weights_sha256": c3d.c3d_weights_sha256(weights_path),
        "c3d_source": {k: source.get(k) for k in ("weights_sha256", "mean_sha256", "mean_shape")},
        "splits": splits,
        "shuffle": f"np.random.RandomState({shuffle_seed}).shuffle" if shuffle_seed is not None else None,
        "kl": "float32, 0 log 0 = 0; std over splits with ddof=0",
        "code_version": code_version(),
    }
    if extra:
        card.update(extra)
    return card


def evaluate_is(
    videos: np.ndarray,
    model: c3d.C3D | None = None,
    *,
    num_videos: int = 2048,
    frames: int = c3d.FRAMES,
    splits: int = 10,
    shuffle_seed: int | None = 42,
    mapping: str = "tgan2",
    device: str | torch.device | None = None,
    batch_size: int = 8,
    weights_path: str | Path | None = None,
    archives_dir: str | Path | None = None,
    dataset: str | None = None,
    extra: dict[str, Any] | None = None,
) -> ISRecord:
    """IS of generated uint8 videos ``[N, L, H, W, 3]`` (memory-mapped is fine): the first ``num_videos``
    videos, frames ``0..frames-1`` (StyleGAN-V's generated set), through the UCF-101 C3D.

    Returns the record: value (mean over splits), std, splits, num_videos, frames, protocol card.
    """
    if videos.dtype != np.uint8 or videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError(f"videos: expected uint8 [N, L, H, W, 3], got {videos.dtype} {videos.shape}")
    if videos.shape[1] < frames:
        raise ValueError(f"videos have {videos.shape[1]} frames, the protocol needs {frames}")
    n = min(num_videos, len(videos))
    if n < num_videos:
        log.warning(
            "only %d videos available (asked for %d); the metric records the count used", n, num_videos
        )
    weights_path = Path(weights_path) if weights_path is not None else c3d.c3d_weights_path()
    if model is None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = c3d.load_c3d(device, weights_path, archives_dir)
        if not weights_path.is_file():  # load_c3d converted the archives into that folder
            weights_path = c3d.c3d_weights_path(weights_path.parent)
    elif not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path} not found: pass weights_path= the converted file the model was loaded from "
            "(its sha256 goes into the protocol card)"
        )
    chunks = (videos[i : min(i + 64, n), :frames] for i in range(0, n, 64))
    probs = c3d_probabilities(chunks, model, device, batch_size, mapping, total=n)
    mean, std = inception_score(probs, splits, shuffle_seed)
    card = protocol_card(
        dataset=dataset,
        num_videos=n,
        frames=frames,
        resolution=videos.shape[2:4],
        splits=splits,
        shuffle_seed=shuffle_seed,
        mapping=mapping,
        weights_path=weights_path,
        extra=extra,
    )
    return ISRecord(metric=card["metric"], value=mean, std=std, splits=splits, num_videos=n, frames=frames,
                    protocol=card)
