"""The `pvdm` command: one subcommand per pipeline stage (what every Snakemake rule calls)."""

from __future__ import annotations

import argparse
import logging
import sys

import pvdm
from pvdm.config import ConfigError
from pvdm.data import commands as data_commands
from pvdm.eval import commands as eval_commands
from pvdm.report import commands as report_commands
from pvdm.train import commands as train_commands
from pvdm.utils.progress import setup_logging

log = logging.getLogger("pvdm")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvdm",
        description="Reproducibility pipeline for PVDM (CVPR 2023). Each subcommand is one stage of the "
        "Snakemake DAG; run `pvdm <command> --help` for its options.",
    )
    parser.add_argument("--version", action="version", version=f"pvdm {pvdm.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    data_commands.register(sub)
    train_commands.register(sub)
    eval_commands.register(sub)
    report_commands.register(sub)
    report_commands.register_publish(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # User errors: one clear message, no traceback (use -v to see it).
        if args.verbose:
            raise
        print(f"pvdm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
