"""The `pvdm` command: one subcommand per pipeline stage (what every Snakemake rule calls)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import sys

import pvdm
from pvdm.config import ConfigError
from pvdm.data import commands as data_commands
from pvdm.eval import commands as eval_commands
from pvdm.report import commands as report_commands
from pvdm.train import commands as train_commands
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
        type=int,
        default=1,
        help="processes for a training command: above 1, the command runs under `torchrun --standalone` "
        "with one process per GPU (or per CPU process over gloo without GPUs); the global batch stays "
        "the config's (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    data_commands.register(sub)
    train_commands.register(sub)
    eval_commands.register(sub)
    report_commands.register(sub)
    report_commands.register_publish(sub)
    report_commands.register_plan(sub)
    return parser


MULTI_PROCESS_COMMANDS = ("train-autoencoder", "finetune-gan", "train-diffusion")


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The same pvdm command under torchrun (single node, a free rendezvous port)."""
    rest, skip = [], False
    for token in argv:
        if skip or token.startswith("--nproc="):
            skip = False
            continue
        skip = token == "--nproc"
        if not skip:
            rest.append(token)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "-m", "pvdm.cli", *rest]


def launch_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process by torchrun running the command in ``nproc`` processes. The CPU threads
    given to the job (OMP_NUM_THREADS, set by Snakemake) are split between the processes."""
    cmd = torchrun_command(nproc, argv)
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads // nproc))
    log.info("launching %d processes: %s", nproc, shlex.join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        if args.command not in MULTI_PROCESS_COMMANDS:
            print(f"pvdm {args.command}: error: --nproc {args.nproc}: only {', '.join(MULTI_PROCESS_COMMANDS)} "
                  "run in several processes", file=sys.stderr)
            return 2
        launch_torchrun(args.nproc, argv)
    try:
        args.func(args)
    except Interrupted as e:
        # SIGTERM (Slurm preemption, time limit) or Ctrl-C during training: state saved, resumable.
        print(f"pvdm {args.command}: {e}", file=sys.stderr)
        return RESUMABLE_EXIT_CODE
    except KeyboardInterrupt:
        if args.verbose:
            raise
        print(f"pvdm {args.command}: interrupted. Finished files are complete and kept (every write is "
              "atomic); rerun the same command to continue.", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, ValueError, FloatingPointError, FolderInUseError, DiskFullError) as e:
        # User errors and a full disk: one clear message, no traceback (use -v to see it).
        if args.verbose:
            raise
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
