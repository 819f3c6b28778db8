"""`pvdm --nproc N [--nnodes M] <command>`: run a training command in N processes on each of M
machines (DDP).

The launcher does what ``torchrun`` does, in a form whose exit this project controls: the
launcher of node 0 hosts the rendezvous store (a c10d TCPStore, the one torchrun's agent hosts:
on a free local port for one node, on ``--rdzv-endpoint`` for several), every launcher waits until
all nodes have joined it, then starts its workers with torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, GROUP_RANK, MASTER_ADDR/PORT, TORCHELASTIC_USE_AGENT_STORE) and waits for them. The
workers are the same ``pvdm`` command and run unchanged under ``torchrun`` too.

What it adds: SIGTERM / SIGINT reach every worker exactly once (the workers run in sessions of
their own, so a terminal's Ctrl-C is not delivered twice); when they all stop resumably the
launcher exits 75 with the one line rank 0 printed, not a launcher traceback; a worker that fails
stops the others, on every node (SIGTERM, then SIGKILL after a grace period) and its exit code is
the launcher's. A node that never joins the rendezvous is an error naming it after
``--rdzv-timeout`` seconds, not a hang. Workers die with the launcher
(``distributed.die_with_launcher``).

Under Slurm (``srun`` one task per node) the node rank, the endpoint and the run id default to
Slurm's variables: SLURM_NODEID; the first host of ``scontrol show hostnames $SLURM_JOB_NODELIST``
at port 20000 + SLURM_JOB_ID mod 20000; SLURM_JOB_ID.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pvdm.cli_options import positive_int
from pvdm.train.signals import RESUMABLE_EXIT_CODE

log = logging.getLogger("pvdm")

GRACE_SECONDS = 30  # a failed worker's peers get this long after SIGTERM before SIGKILL
LAUNCHER_ENV = "PVDM_LAUNCHER_PID"
RDZV_TIMEOUT_S = 600  # how long launchers wait for every node (Slurm starts an allocation's tasks together)
LEAVE_SECONDS = 10  # node 0 keeps its store this long for nodes still ending (they look every second)
FAILED_KEY = "pvdm/failed"  # set in the store by the node whose worker failed first


class RendezvousError(RuntimeError):
    """The nodes of a multi-node run did not meet: one line naming the node(s) missing."""


@dataclass(frozen=True)
class Rendezvous:
    """Where the launchers of a run meet: node 0 hosts the store at host:port."""

    nnodes: int
    node_rank: int
    host: str
    port: int
    run_id: str
    timeout_s: float

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def add_options(parser: argparse.ArgumentParser) -> None:
    """The launcher's global options of the `pvdm` command (see the module doc for their defaults)."""
    parser.add_argument("--nnodes", type=positive_int, default=1,
                        help="machines of a training command, each running --nproc processes (under srun: one task "
                        "per node); the global batch stays the config's (default %(default)s)")
    parser.add_argument("--node-rank", type=int, help="this machine's index, 0 .. nnodes-1 (default: $SLURM_NODEID)")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="where node 0's launcher hosts the rendezvous store (default: the first host of "
                        "$SLURM_JOB_NODELIST, port 20000 + SLURM_JOB_ID mod 20000)")
    parser.add_argument("--rdzv-id", help="the run's id, the same on every node (default: $SLURM_JOB_ID)")
    parser.add_argument("--rdzv-timeout", type=positive_int, default=RDZV_TIMEOUT_S,
                        help="seconds to wait for every node to join (default %(default)s)")


def first_slurm_host(nodelist: str) -> str:
    """The address of the first host of a Slurm node list (``node[01-04]`` -> ``node01``), node 0
    of srun's numbering."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
    hosts = out.stdout.split()
    if out.returncode != 0 or not hosts:
        raise RendezvousError(f"`scontrol show hostnames {nodelist}` failed: {out.stderr.strip() or 'no hosts'}")
    try:
        socket.getaddrinfo(hosts[0], None)
        return hosts[0]
    except OSError:  # a node name that DNS does not know (several slurmd on one machine): its NodeAddr
        shown = subprocess.run(["scontrol", "show", "node", "-o", hosts[0]], capture_output=True, text=True,
                               timeout=60).stdout
        addr = re.search(r"\bNodeAddr=(\S+)", shown)
        if addr is None:
            raise RendezvousError(f"node {hosts[0]} (first of {nodelist}) does not resolve and Slurm gives no "
                                  "NodeAddr for it; pass --rdzv-endpoint HOST:PORT") from None
        return addr.group(1)


def rendezvous_from(args: argparse.Namespace, env: dict[str, str] | None = None) -> Rendezvous:
    """The run's rendezvous from the options, filled in from Slurm's variables where not given."""
    env = dict(os.environ) if env is None else env
    rank = args.node_rank if args.node_rank is not None else env.get("SLURM_NODEID")
    if rank is None:
        raise RendezvousError(f"--nnodes {args.nnodes}: which node is this? Pass --node-rank, or run one launcher "
                              "per node under srun (SLURM_NODEID)")
    rank = int(rank)
    if not 0 <= rank < args.nnodes:
        raise RendezvousError(f"--node-rank {rank}: must be in 0 .. {args.nnodes - 1} (--nnodes {args.nnodes})")
    job = env.get("SLURM_JOB_ID")
    endpoint = args.rdzv_endpoint
    if endpoint is None:
        if job is None or "SLURM_JOB_NODELIST" not in env:
            raise RendezvousError(f"--nnodes {args.nnodes}: pass --rdzv-endpoint HOST:PORT (node 0's address), or "
                                  "run under Slurm (SLURM_JOB_NODELIST, SLURM_JOB_ID)")
        endpoint = f"{first_slurm_host(env['SLURM_JOB_NODELIST'])}:{20000 + int(job) % 20000}"
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RendezvousError(f"--rdzv-endpoint {endpoint!r}: expected HOST:PORT with a port in 1..65535")
    return Rendezvous(args.nnodes, rank, host, int(port), args.rdzv_id or job or "pvdm", args.rdzv_timeout)


def worker_command(argv: list[str], command: str, verbose: bool, threads: int | None) -> list[str]:
    """The worker's command line: the same subcommand and arguments, without the launcher's options,
    with this worker's share of the threads."""
    rest = argv[argv.index(command):]
    head = (["-v"] if verbose else []) + (["--threads", str(threads)] if threads else [])
    return [sys.executable, "-m", "pvdm.cli", *head, *rest]


def worker_env(local_rank: int, nproc: int, addr: str, port: int, threads: int, node_rank: int = 0,
               nnodes: int = 1) -> dict[str, str]:
    return {
        **os.environ,
        "RANK": str(node_rank * nproc + local_rank), "LOCAL_RANK": str(local_rank), "GROUP_RANK": str(node_rank),
        "WORLD_SIZE": str(nnodes * nproc), "LOCAL_WORLD_SIZE": str(nproc),
        "MASTER_ADDR": addr, "MASTER_PORT": str(port),
        "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0",
        "OMP_NUM_THREADS": str(threads), LAUNCHER_ENV: str(os.getpid()),
    }


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode  # killed by signal N: 128 + N, as a shell says


def node_names(nnodes: int) -> list[str]:
    """Host of each node rank when Slurm placed the run (SLURM_JOB_NODELIST), else ``node <rank>``."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    hosts: list[str] = []
    if nodelist:
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=60)
            hosts = out.stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            hosts = []
    return [f"node {r} ({hosts[r]})" if r < len(hosts) else f"node {r}" for r in range(nnodes)]


def _wait_for_port(rdzv: Rendezvous, deadline: float) -> None:
    """Wait until node 0's store accepts connections; a RendezvousError naming it at the deadline."""
    while True:
        try:
            socket.create_connection((rdzv.host, rdzv.port), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise RendezvousError(
                    f"node {rdzv.node_rank} could not reach node 0's rendezvous store at {rdzv.endpoint} within "
                    f"{rdzv.timeout_s:g} s ({e.strerror or e}): {node_names(rdzv.nnodes)[0]} did not start its "
                    "launcher, or the port is blocked") from None
            time.sleep(0.5)


def meet(rdzv: Rendezvous) -> Any:
    """Open (node 0) or reach the rendezvous store and wait until every node has joined it; the store."""
    from torch.distributed import TCPStore  # not at import: `pvdm --help` stays fast

    timeout = timedelta(seconds=rdzv.timeout_s)
    deadline = time.monotonic() + rdzv.timeout_s
    if rdzv.node_rank != 0:
        _wait_for_port(rdzv, deadline)  # before TCPStore: its own timeout prints C++ stack traces
    try:
        store = TCPStore(rdzv.host, rdzv.port, is_master=rdzv.node_rank == 0, wait_for_workers=False,
                         timeout=timeout)
    except (RuntimeError, OSError) as e:
        if rdzv.node_rank == 0:
            raise RendezvousError(f"node 0 could not open the rendezvous store on port {rdzv.port} ({e}); "
                                  "is another run using it? Pass another --rdzv-endpoint") from None
        raise RendezvousError(f"node {rdzv.node_rank} could not reach node 0's rendezvous store at {rdzv.endpoint} "
                              f"within {rdzv.timeout_s:g} s: node 0 did not start, or the port is blocked "
                              f"({str(e).splitlines()[0]})") from None
    if rdzv.node_rank == 0:
        store.set("pvdm/run", rdzv.run_id)
    elif (other := store.get("pvdm/run").decode()) != rdzv.run_id:
        raise RendezvousError(f"the rendezvous store at {rdzv.endpoint} belongs to run {other!r}, not {rdzv.run_id!r}")
    store.set(f"pvdm/node/{rdzv.node_rank}", socket.gethostname())
    joined = store.add("pvdm/joined", 1)
    while joined < rdzv.nnodes:
        if time.monotonic() > deadline:
            names = node_names(rdzv.nnodes)
            missing = [names[r] for r in range(rdzv.nnodes) if not store.check([f"pvdm/node/{r}"])]
            raise RendezvousError(f"rendezvous at {rdzv.endpoint} timed out after {rdzv.timeout_s:g} s: {joined} of "
                                  f"{rdzv.nnodes} nodes joined; missing: {', '.join(missing)} (its launcher did "
                                  "not start or cannot reach this host)")
        time.sleep(0.2)
        joined = store.add("pvdm/joined", 0)
    return store


def launch(nproc: int, argv: list[str], command: str, verbose: bool, threads: int | None,
           rdzv: Rendezvous | None = None) -> int:
    """Run ``pvdm <command>`` in ``nproc`` processes on this node (of ``rdzv.nnodes``); the
    launcher's exit code (see the module doc)."""
    total = threads or int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    per_worker = max(1, total // nproc)
    if rdzv is None:
        from torch.distributed import TCPStore

        store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
        addr, port, node_rank, nnodes = "127.0.0.1", store.port, 0, 1
    else:
        try:
            store = meet(rdzv)
        except RendezvousError as e:
            print(f"pvdm {command}: error: {e}", file=sys.stderr)
            return 1
        addr, port, node_rank, nnodes = rdzv.host, rdzv.port, rdzv.node_rank, rdzv.nnodes
    cmd = worker_command(argv, command, verbose, per_worker)
    log.info("launching %d processes (%d threads each)%s: %s", nproc, per_worker,
             f" on node {node_rank} of {nnodes}" if nnodes > 1 else "", shlex.join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    procs = [subprocess.Popen(cmd, env=worker_env(r, nproc, addr, port, per_worker, node_rank, nnodes),
                              start_new_session=True) for r in range(nproc)]

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _wait(procs, store if nnodes > 1 else None, node_rank * nproc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for p in procs:  # only reached with live workers on an error in the launcher itself
            if p.poll() is None:
                p.kill()
        if nnodes > 1:
            _leave(store, node_rank, nnodes)
        del store


def _leave(store: Any, node_rank: int, nnodes: int) -> None:
    """Node 0's store outlives the other nodes' workers (up to a grace period), so that they can still
    read a failure and do not take its closing for one."""
    try:
        ended = store.add("pvdm/ended", 1)
        deadline = time.monotonic() + LEAVE_SECONDS
        while node_rank == 0 and ended < nnodes and time.monotonic() < deadline:
            time.sleep(0.2)
            ended = store.add("pvdm/ended", 0)
    except (RuntimeError, OSError):
        pass  # node 0 already gone: nothing to wait for


def _peer_failed(store: Any) -> str | None:
    """What another node reported as failed, or that node 0's store is gone (None: all well)."""
    try:
        return store.get(FAILED_KEY).decode() if store.check([FAILED_KEY]) else None
    except (RuntimeError, OSError):
        return "node 0's launcher ended (its rendezvous store is gone)"


def _report_failure(store: Any, what: str) -> None:
    try:
        store.set(FAILED_KEY, what)
    except (RuntimeError, OSError):
        pass  # node 0's store is gone: the other nodes see that instead


def _stop(procs: list[subprocess.Popen]) -> float:
    """SIGTERM the live workers; the deadline after which the rest are killed."""
    for q in procs:
        if q.poll() is None:
            q.terminate()
    return time.monotonic() + GRACE_SECONDS


def _wait(procs: list[subprocess.Popen], store: Any = None, first_rank: int = 0) -> int:
    first_failure: tuple[int, int] | None = None  # (rank, code) of the first worker that failed
    deadline, peer, next_look = None, None, 0.0
    running = True
    while running:
        running = any(p.poll() is None for p in procs)  # before the look below: none may end unseen
        for local, p in enumerate(procs):
            code = p.poll()
            if first_failure is None and code not in (None, 0, RESUMABLE_EXIT_CODE):
                first_failure = (first_rank + local, exit_code(code))
                deadline = _stop(procs)  # its peers would wait for it in the next collective
                if store is not None:
                    _report_failure(store, f"process {first_rank + local} failed (exit code {exit_code(code)})")
        if store is not None and peer is None and first_failure is None and time.monotonic() > next_look:
            next_look = time.monotonic() + 1
            if (peer := _peer_failed(store)) is not None:
                log.error("stopping this node's processes: on another node, %s", peer)
                deadline = _stop(procs)
        if deadline is not None and time.monotonic() > deadline:
            for q in procs:
                if q.poll() is None:
                    q.kill()
        if running:
            time.sleep(0.1)
    if first_failure is not None:
        rank, code = first_failure
        # Only rank 0 prints a user error; say where the failure started when it was elsewhere.
        if rank != 0 and exit_code(procs[0].returncode) != code:
            print(f"pvdm: process {rank} failed first (exit code {code}); the others were "
                  "stopped. Rerun with -v to see every process's messages.", file=sys.stderr)
        return code
    codes = [exit_code(p.returncode) for p in procs]
    if peer is not None and any(c not in (0, RESUMABLE_EXIT_CODE) for c in codes):
        print(f"pvdm: stopped because on another node {peer}", file=sys.stderr)
        return max(codes)
    return RESUMABLE_EXIT_CODE if RESUMABLE_EXIT_CODE in codes else 0
