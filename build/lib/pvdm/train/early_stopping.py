"""Automatic early stopping for the GAN stage.

PVDM's GAN fine-tuning "often diverges suddenly" and the original leaves stopping to the user.
``EarlyStopping`` watches a held-out metric (PSNR: higher is better; LPIPS / R-FVD: lower) and
stops after ``patience`` evaluations without an improvement of at least ``min_delta``.
``DivergenceGuard`` stops at once on a non-finite loss or a loss spike (a loss above
``spike_factor`` times the median of the recent window).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

MONITOR_MODES = {"psnr": "max", "ssim": "max", "lpips": "min", "rfvd": "min"}


class EarlyStopping:
    def __init__(self, monitor: str, patience: int, min_delta: float = 0.0):
        if monitor not in MONITOR_MODES:
            raise ValueError(f"monitor {monitor!r}; choose one of {sorted(MONITOR_MODES)}")
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = MONITOR_MODES[monitor]
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []

    def update(self, step: int, metrics: dict[str, float]) -> bool:
        """Record an evaluation; True if it is the new best."""
        value = metrics[self.monitor]
        sign = 1.0 if self.mode == "max" else -1.0
        improved = math.isfinite(value) and (self.best is None or sign * (value - self.best) > self.min_delta)
        if improved:
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        self.history.append({"step": step, **metrics, "best": improved})
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "history": self.history,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.best, self.best_step, self.bad_evals = s["best"], s["best_step"], s["bad_evals"]
        self.history = list(s["history"])


class DivergenceGuard:
    def __init__(self, spike_factor: float = 10.0, window: int = 50, warmup: int = 10):
        self.spike_factor, self.warmup = spike_factor, warmup
        self.recent: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> str | None:
        """None if training may go on, else the reason to stop."""
        if not math.isfinite(loss):
            return f"diverged: non-finite loss ({loss})"
        if len(self.recent) >= self.warmup:
            median = sorted(self.recent)[len(self.recent) // 2]
            if median > 0 and loss > self.spike_factor * median:
                return f"diverged: loss spike {loss:.4g} > {self.spike_factor} x running median {median:.4g}"
        self.recent.append(loss)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"recent": list(self.recent)}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.recent.clear()
        self.recent.extend(s["recent"])
