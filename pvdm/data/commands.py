"""`pvdm prepare`: build the clip stores of one experiment."""

from __future__ import annotations

import argparse
from pathlib import Path

from pvdm.config import experiment, experiment_from_json, load_config


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    """The config options every stage command takes."""
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--config",
        action="append",
        metavar="YAML",
        help="config file; repeat to layer files (later ones override earlier ones)",
    )
    g.add_argument("--exp", help="experiment id inside the config (optional when it holds one experiment)")
    g.add_argument(
        "--settings", metavar="JSON", help="an experiment's settings as JSON (how Snakemake rules call)"
    )
    g.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. experiments.mnist.data.resolution=32",
    )


def resolve_experiment(args: argparse.Namespace) -> tuple[str, dict]:
    if args.settings:
        if args.config or args.overrides:
            raise SystemExit("error: use either --settings or --config [overrides], not both")
        return args.exp or "experiment", experiment_from_json(args.settings)
    if not args.config:
        raise SystemExit("error: give --config YAML (e.g. config/config.yaml) or --settings JSON")
    return experiment(load_config(args.config, args.overrides), args.exp)


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
    p.add_argument("--out", required=True, type=Path, help="output folder, e.g. results/mnist/data")
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
    p.add_argument("--out", required=True, type=Path, help="e.g. results/raw/ucf101")
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
