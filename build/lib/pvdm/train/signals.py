"""Stopping training on a signal: Slurm's SIGTERM (preemption, time limit) or Ctrl-C.

Kept free of torch so that the ``pvdm`` command can import it without loading torch.
"""

from __future__ import annotations

from pathlib import Path

# EX_TEMPFAIL: the job stopped on a signal after saving its complete state; rerunning it continues.
RESUMABLE_EXIT_CODE = 75


class Interrupted(Exception):
    """Training stopped on SIGTERM/SIGINT at a step boundary, with state.pt saved at that step."""

    def __init__(self, signame: str, step: int, state_path: Path):
        super().__init__(f"stopped by {signame} at step {step}; the complete state is saved in {state_path}: "
                         "rerun the same command to continue from there")
        self.signame, self.step = signame, step
