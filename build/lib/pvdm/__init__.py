"""pvdm: reproducibility pipeline for PVDM (CVPR 2023)."""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting (GNU OpenMP's default) turn a second process on the same cores
# into a 3.2-3.7x slow-down instead of the 1.5-2x its share of the cores explains; sleeping threads
# give 1.3-1.8x, for 2-20% (run-to-run noise included) when the job is alone on an idle machine
# (benchmarks/bench_threads.py, benchmarks/results/threads.md). Read once, when OpenMP starts: this
# must run before torch is imported, which every `pvdm` command and job does. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
