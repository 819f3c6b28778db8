"""`pvdm --nproc N <command>`: run a training command in N processes on this machine (DDP).

The launcher does what ``torchrun --standalone`` does for one node, in a form whose exit this
project controls: it hosts the rendezvous store (a c10d TCPStore on a free local port, the one
torchrun's agent hosts), starts the workers with torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT, TORCHELASTIC_USE_AGENT_STORE), and waits for them. The workers are
the same ``pvdm`` command and run unchanged under ``torchrun`` too.

What it adds: SIGTERM / SIGINT reach every worker exactly once (the workers run in sessions of
their own, so a terminal's Ctrl-C is not delivered twice); when they all stop resumably the
launcher exits 75 with the one line rank 0 printed, not a launcher traceback; a worker that fails
stops the others (SIGTERM, then SIGKILL after a grace period) and its exit code is the launcher's.
Workers die with the launcher (``distributed.die_with_launcher``).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Any

from pvdm.train.signals import RESUMABLE_EXIT_CODE

log = logging.getLogger("pvdm")

GRACE_SECONDS = 30  # a failed worker's peers get this long after SIGTERM before SIGKILL
LAUNCHER_ENV = "PVDM_LAUNCHER_PID"


def worker_command(argv: list[str], command: str, verbose: bool, threads: int | None) -> list[str]:
    """The worker's command line: the same subcommand and arguments, without --nproc, with this
    worker's share of the threads."""
    rest = argv[argv.index(command):]
    head = (["-v"] if verbose else []) + (["--threads", str(threads)] if threads else [])
    return [sys.executable, "-m", "pvdm.cli", *head, *rest]


def worker_env(rank: int, nproc: int, port: int, threads: int) -> dict[str, str]:
    return {
        **os.environ,
        "RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0",
        "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0",
        "OMP_NUM_THREADS": str(threads), LAUNCHER_ENV: str(os.getpid()),
    }


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N, as a shell says


def launch(nproc: int, argv: list[str], command: str, verbose: bool, threads: int | None) -> int:
    """Run ``pvdm <command>`` in ``nproc`` processes; the launcher's exit code (see the module doc)."""
    from torch.distributed import TCPStore  # not at import: `pvdm --help` stays fast

    total = threads or int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    per_worker = max(1, total // nproc)
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    cmd = worker_command(argv, command, verbose, per_worker)
    log.info("launching %d processes (%d threads each): %s", nproc, per_worker, shlex.join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    procs = [subprocess.Popen(cmd, env=worker_env(rank, nproc, store.port, per_worker), start_new_session=True)
             for rank in range(nproc)]

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(procs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:  # only reached with live workers on an error in the launcher itself
            if p.poll() is None:
                p.kill()
        del store


def _wait(procs: list[subprocess.Popen]) -> int:
    first_failure: tuple[int, int] | None = None  # (rank, code) of the first worker that failed
    deadline = None
    while any(p.poll() is None for p in procs):
        for rank, p in enumerate(procs):
            code = p.poll()
            if first_failure is None and code not in (None, 0, RESUMABLE_EXIT_CODE):
                first_failure = (rank, exit_code(code))
                deadline = time.monotonic() + GRACE_SECONDS
                for q in procs:  # its peers would wait for it in the next collective
                    if q.poll() is None:
                        q.terminate()
        if deadline is not None and time.monotonic() > deadline:
            for q in procs:
                if q.poll() is None:
                    q.kill()
        time.sleep(0.1)
    if first_failure is not None:
        rank, code = first_failure
        # Only rank 0 prints a user error; say where the failure started when it was elsewhere.
        if rank != 0 and exit_code(procs[0].returncode) != code:
            print(f"pvdm: process {rank} of {len(procs)} failed first (exit code {code}); the others were "
                  "stopped. Rerun with -v to see every process's messages.", file=sys.stderr)
        return code
    codes = {p.returncode for p in procs}
    return RESUMABLE_EXIT_CODE if RESUMABLE_EXIT_CODE in codes else 0
