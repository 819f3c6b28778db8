"""Exponential moving average of model parameters (the original's LitEma schedule).

Updated every ``every`` iterations with decay ``min(decay, (1 + n) / (10 + n))``, n = updates so
far, so early updates track the model closely. Buffers are copied, not averaged. The shadow
weights and n are part of the training state (the original never saved them).
"""

from __future__ import annotations

import copy
from typing import Any

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, every: int = 25):
        self.decay, self.every, self.num_updates = decay, every, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        """Call after optimiser step ``step`` (1-based); updates on multiples of ``every``."""
        if step % self.every:
            return
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1.0 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.num_updates = s["num_updates"]
