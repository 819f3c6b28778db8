"""The `pvdm` command: one subcommand per pipeline stage (what every Snakemake rule calls)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

import pvdm
from pvdm import sample_commands
from pvdm.cli_options import positive_int
from pvdm.config import ConfigError
from pvdm.dag import MULTI_PROCESS_STAGES
from pvdm.data import commands as data_commands
from pvdm.eval import commands as eval_commands
from pvdm.report import commands as report_commands
from pvdm.train import commands as train_commands
from pvdm.train.launch import add_options as add_launcher_options
from pvdm.train.signals import RESUMABLE_EXIT_CODE, Interrupted
from pvdm.utils.io import DiskFullError, FolderInUseError
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
    parser.add_argument(
        "--nproc",
        type=positive_int,
        default=1,
        help="processes for a training command: above 1, one process per GPU (or per CPU share over gloo "
        "without GPUs), started by pvdm's launcher with torchrun's environment; the global batch stays the "
        "config's (default %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="CPU threads of the command (split between --nproc processes). On CPU the numbers depend on it "
        "(the order of reductions), so the Snakemake rules pass the config's resources.<stage> value, never "
        "what --cores leaves a job; default: OMP_NUM_THREADS, else every core",
    )
    add_launcher_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    data_commands.register(sub)
    train_commands.register(sub)
    sample_commands.register(sub)
    eval_commands.register(sub)
    report_commands.register(sub)
    report_commands.register_publish(sub)
    report_commands.register_plan(sub)
    return parser


MULTI_PROCESS_COMMANDS = tuple(MULTI_PROCESS_STAGES.values())


def set_threads(threads: int) -> None:
    """Fix the CPU threads of this process (and of anything it starts)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    worker = "RANK" in os.environ  # a process of a multi-process run (pvdm's launcher or torchrun)
    nnodes = getattr(args, "nnodes", 1)
    if (args.nproc > 1 or nnodes > 1) and not worker:
        if args.command not in MULTI_PROCESS_COMMANDS:
            print(f"pvdm {args.command}: error: --nproc {args.nproc} --nnodes {nnodes}: only "
                  f"{', '.join(MULTI_PROCESS_COMMANDS)} run in several processes", file=sys.stderr)
            return 2
        from pvdm.train.launch import RendezvousError, launch, rendezvous_from

        try:
            rdzv = rendezvous_from(args) if nnodes > 1 else None
        except RendezvousError as e:
            print(f"pvdm {args.command}: error: {e}", file=sys.stderr)
            return 2
        return launch(args.nproc, argv, args.command, args.verbose, getattr(args, "threads", None), rdzv)
    # Only rank 0 speaks for a multi-process run: the others would print the same line again.
    speaks = os.environ.get("RANK", "0") == "0" or args.verbose
    if getattr(args, "threads", None):
        set_threads(args.threads)
    try:
        args.func(args)
    except Interrupted as e:
        # SIGTERM (Slurm preemption, time limit) or Ctrl-C during training: state saved, resumable.
        if speaks:
            print(f"pvdm {args.command}: {e}", file=sys.stderr)
        return RESUMABLE_EXIT_CODE
    except KeyboardInterrupt:
        if args.verbose:
            raise
        if speaks:
            print(f"pvdm {args.command}: interrupted. Finished files are complete and kept (every write is "
                  "atomic); rerun the same command to continue.", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError, FolderInUseError, DiskFullError) as e:
        # User errors and a full disk: one clear message, no traceback (use -v to see it).
        if args.verbose:
            raise
        if speaks:
            print(f"pvdm {args.command}: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, DiskFullError) else 2
    except OSError as e:
        if args.verbose or e.errno != errno.ENOSPC:
            raise
        print(f"pvdm {args.command}: error: no space left on device ({e}). Free space and rerun the same "
              "command: finished files are complete and kept.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
