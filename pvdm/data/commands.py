"""`pvdm prepare`: build the clip stores of one experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvdm.cli_options import (
    Command,
    add_experiment_args,
    add_options,
    opt,
    register_commands,
    resolve_experiment,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="raw dataset -> clip stores (train, test, train_long) + manifest.json",
        description=(
            "Validate the dataset layout, decode every video (PyAV) or frame folder, centre-crop and resize the "
            "frames, and write fixed-length uint8 clips into memory-mappable stores under OUT: train/ (evenly "
            "spaced clips per video), test/ (one clip per video at a seeded random offset) and train_long/ "
            "(long real clips for FVD-128). Unreadable, corrupt and too-short videos are skipped and listed in "
            "OUT/manifest.json. The embedded default (moving_mnist) is generated, no download. dataset videos reads "
            "your own folder or CSV (data.root): duplicates count once, the split keeps each source group on one "
            "side, clips stay within shots, and the manifest lists every file with its split, shots or reason."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_experiment_args(p)
    add_options(p, out="output folder, e.g. results/mnist/data")
    p.add_argument("--root", type=Path, help="raw dataset folder (overrides data.root)")
    p.add_argument("--workers", type=int, help="decoding processes (overrides data.workers)")
    p.set_defaults(func=run_prepare)
    register_download(sub)
    register_init(sub)


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


INIT_OPTIONS = [
    opt("--videos", type=Path, required=True, metavar="DIR",
        help="folder of your videos (searched recursively) or a CSV list (path[,split][,group])"),
    opt("--out", type=Path, default=Path("my_videos.yaml"), metavar="FILE.yaml", help="config to write"),
    opt("--exp", default="myvideos", help="experiment id (outputs go to results/<id>/)"),
    opt("--group-pattern", default=None, help="regex whose first group names a video's source (data.group_pattern)"),
    opt("--force", action="store_true", help="overwrite --out if it exists"),
]


def run_init(args: argparse.Namespace) -> None:
    """Inspect a folder (or CSV list) of your videos: files, durations, resolutions, frame rates, shots,
    duplicates and unreadable files, and the train/test split `pvdm prepare` will make. Then write a
    commented config with one experiment sized to the data (resolution no larger than the smallest
    source, the CPU demo's model and steps, the paper's settings in the comments) and print its
    `pvdm plan`. Next: `snakemake --cores 2 --configfile FILE.yaml` runs the whole DAG."""
    from pvdm.data.init_config import format_table, inspect_videos, write_config
    from pvdm.report.commands import run_plan

    if args.out.exists() and not args.force:
        raise ValueError(f"{args.out} exists; give another --out or --force")
    rows = inspect_videos(args.videos, group_pattern=args.group_pattern)
    print(format_table(rows))
    sizes = write_config(args.videos, rows, args.out, args.exp, args.group_pattern)
    print(f"\nwrote {args.out}: experiment {args.exp}, {sizes['resolution']}x{sizes['resolution']}, "
          f"FVD on {sizes['fvd_videos']} clips\n")
    run_plan(argparse.Namespace(config=[args.out], exp=None, repo=Path("."), throughput=None))
    print(f"\nnext: pvdm prepare --config {args.out} --out results/{args.exp}/data\n"
          f"      snakemake --cores 2 --configfile {args.out}")


def register_init(sub: argparse._SubParsersAction) -> None:
    register_commands(sub, [Command("init", "inspect a folder of your videos and write a config sized to it",
                                    INIT_OPTIONS, run_init)])
