"""pvdm: reproducibility pipeline for PVDM (CVPR 2023)."""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting (GNU OpenMP's default) turn a second process on the same cores
# into a 4-27x slow-down of a 2-thread training step instead of the 1.5-2x its share of the cores
# explains; sleeping threads give 1.2-1.6x, for up to ~40 % when the job is alone on an idle machine
# (benchmarks/bench_threads.py, benchmarks/results/threads.md). Read once, when OpenMP starts: this
# must run before torch is imported, which every `pvdm` command and job does. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
