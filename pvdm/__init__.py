"""pvdm: reproducibility pipeline for PVDM (CVPR 2023)."""

import os
import sys

__version__ = "0.1.0"

# OpenMP threads that spin while waiting (GNU OpenMP's default) turn a second process on the same cores
# into a 4-27x slow-down of a 2-thread training step instead of the 1.5-2x its share of the cores
# explains; sleeping threads give 1.2-1.6x, for up to ~40 % when the job is alone on an idle machine
# (benchmarks/bench_threads.py, benchmarks/results/threads.md). Read once, when OpenMP starts: this
# must run before torch is imported, which every `pvdm` command and job does. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _threads_option(argv: list[str]) -> str | None:
    """The value of `pvdm --threads N` (a global option: before the subcommand), if given."""
    for i, token in enumerate(argv):
        if token.startswith("--threads="):
            return token.split("=", 1)[1]
        if token == "--threads":
            return argv[i + 1] if i + 1 < len(argv) else None
        if not token.startswith("-") and (i == 0 or argv[i - 1] != "--nproc"):
            return None  # the subcommand: its own options follow
    return None


# `pvdm --threads N` fixes the thread count of every library of the process. numpy's and scipy's
# BLAS read theirs once, when they load (before `pvdm.cli` has parsed anything: its imports load
# numpy), and on CPU the numbers depend on it: so it is applied here, first.
if sys.argv and (os.path.basename(sys.argv[0]) == "pvdm" or sys.argv[0] == "-m" or sys.argv[0].endswith("pvdm/cli.py")):
    _n = _threads_option(sys.argv[1:])
    if _n is not None and _n.isdigit() and int(_n) > 0:
        for _var in THREAD_VARIABLES:
            os.environ[_var] = _n
