"""Reconstruction quality of an autoencoder on a clip store (the held-out split by default).

The original computed its "test" PSNR and R-FVD on the training loader; here the caller passes
the store, and the stage rules pass the held-out one. ``reconstruct`` leaves the model in the mode
it found it in, so a training loop can evaluate between steps.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from pvdm.data.loader import to_model_range, to_uint8
from pvdm.data.store import ClipStore
from pvdm.eval.records import ReconRecord
from pvdm.eval.video_metrics import lpips_video, psnr, ssim
from pvdm.utils.device import metric_numerics
from pvdm.utils.io import sha256_file


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model.eval()`` for the block, then the mode it had before."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


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
    (the first ``frames`` frames of each), with the model in eval mode while it runs."""
    n = min(num_videos, len(store))
    with eval_mode(model):
        for start in range(0, n, batch_size):
            real = np.ascontiguousarray(store.clips[start : min(start + batch_size, n), :frames])
            x = to_model_range(torch.from_numpy(real).to(device))
            x_hat = model(x)
            if not torch.isfinite(x_hat).all():  # quantised, NaN would pass as black frames
                raise FloatingPointError(f"the autoencoder's reconstructions of {store.path} are not finite "
                                         "(NaN or inf): its weights or inputs are broken")
            yield real, to_uint8(x_hat)


def recon_metrics(
    model: torch.nn.Module, store: ClipStore, num_videos: int, frames: int, *,
    device: torch.device | str = "cpu", batch_size: int = 8, with_lpips: bool = True,
) -> dict[str, float]:
    """Mean PSNR (dB), SSIM and LPIPS-VGG over the first ``num_videos`` clips of ``store``.

    Metrics are computed on the uint8-quantised reconstructions, what a user would save and view.
    """
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "lpips": []}
    with metric_numerics():  # float32 on a GPU too (no TF32)
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


def evaluate_recon(
    checkpoint: str | Path,
    store: ClipStore,
    split: str,
    num_videos: int,
    device: torch.device,
    rfvd: bool = True,
    bootstrap: int = 100,
    scratch_dir: str | Path | None = None,
) -> ReconRecord:
    """PSNR, SSIM, LPIPS and (``rfvd``) R-FVD of the autoencoder in ``checkpoint`` on ``store``.

    Reconstructions for R-FVD go to a scratch memory map in ``scratch_dir`` (they can exceed RAM at
    256 px); the I3D features of both sets follow the FVD protocol with the clips in store order.
    """
    from pvdm.checkpoints import load_autoencoder
    from pvdm.eval.fvd import code_version, evaluate_fvd

    model = load_autoencoder(checkpoint, map_location=device)
    frames, n = model.cfg.frames, min(num_videos, len(store))
    scores = recon_metrics(model, store, n, frames, device=device)
    rfvd_record = None
    if rfvd:
        if scratch_dir is not None:
            Path(scratch_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch_dir, prefix=".recon-") as scratch:
            recon = np.lib.format.open_memmap(
                Path(scratch) / "recon.npy", mode="w+", dtype=np.uint8, shape=(n, frames, *store.shape[2:])
            )
            done = 0
            for _, rec in reconstruct(model, store, n, frames, device=device):
                recon[done : done + len(rec)] = rec
                done += len(rec)
            rfvd_record = evaluate_fvd(
                store.clips,
                recon,
                num_videos=n,
                frames=frames,
                selector="first_n_from_start",
                bootstrap_rounds=bootstrap,
                device=device,
                dataset=store.info.get("dataset"),
                split=split,
            )
            del recon
    protocol = {
        "what": "reconstruction of held-out clips" if split == "test" else f"reconstruction ({split})",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "dataset": store.info.get("dataset"),
        "num_videos": n,
        "frames": frames,
        "resolution": [store.resolution, store.resolution],
        "psnr": "uint8 scale, per video, averaged",
        "ssim": "Gaussian 11x11 sigma 1.5, per frame, averaged",
        "lpips_net": "vgg (every frame)",
        "code_version": code_version(),
    }
    return ReconRecord(
        psnr=scores["psnr"], ssim=scores["ssim"], lpips=scores["lpips"], num_videos=n, split=split,
        protocol=protocol, rfvd=rfvd_record,
    )
