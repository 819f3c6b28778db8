"""`pvdm prepare`: build the clip stores of one experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvdm.cli_options import add_experiment_args, add_options, resolve_experiment


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="raw dataset -> clip stores (train, test, train_long) + manifest.json",
        description=(
            "Validate the dataset layout, decode every video (PyAV) or frame folder, centre-crop and resize the "
            "frames, and write fixed-length uint8 clips into memory-mappable stores under OUT: train/ (evenly "
            "spaced clips per video), test/ (one clip per video at a seeded random offset) and train_long/ "
            "(long real clips for FVD-128). Unreadable, corrupt and too-short videos are skipped and listed in "
            "OUT/manifest.json. The embedded default (moving_mnist) is generated, no download."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_experiment_args(p)
    add_options(p, out="output folder, e.g. results/mnist/data")
    p.add_argument("--root", type=Path, help="raw dataset folder (overrides data.root)")
    p.add_argument("--workers", type=int, help="decoding processes (overrides data.workers)")
    p.set_defaults(func=run_prepare)
    register_download(sub)


def register_download(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download + verify + extract a dataset's archives (data.download.archives)",
        description="Fetch each archive of data.download.archives into OUT/archives/, verify its sha256/md5 "
        "(a mismatch discards the file), extract it into OUT and record the hashes in OUT/download.json.",
    )
    add_experiment_args(p)
    add_options(p, out="e.g. results/raw/ucf101")
    p.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> None:
    from pvdm.data.download import download_dataset

    _, exp = resolve_experiment(args)
    download_dataset(exp["data"]["download"]["archives"], args.out)


def run_prepare(args: argparse.Namespace) -> None:
    from pvdm.data.prepare import prepare

    _, exp = resolve_experiment(args)
    if args.workers:
        exp["data"]["workers"] = args.workers
    prepare(exp, args.out, args.root)
