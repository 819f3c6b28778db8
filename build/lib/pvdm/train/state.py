"""Complete, resumable training state, written atomically.

``state.pt`` holds everything a run needs to continue exactly where it stopped: model(s),
optimizers, grad scalers, discriminators, EMA, step, RNG states, the resolved config and the
early-stopping record. Rerunning the same command resumes from it; a run with a different config
starts over (and says so) instead of mixing two experiments.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from pvdm.utils.io import atomic_torch_save

log = logging.getLogger("pvdm.train")

STATE_FORMAT = 1


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, step: int, config: Any, **parts: Any) -> None:
    """``parts``: name -> object with ``state_dict()`` (module, optimizer, scaler) or plain data."""
    payload = {
        "format": STATE_FORMAT,
        "step": step,
        "config": config,
        "config_hash": config_hash(config),
        "rng": rng_state(),
    }
    for name, obj in parts.items():
        payload[name] = obj.state_dict() if hasattr(obj, "state_dict") else obj
    atomic_torch_save(payload, path)


def load_state(path: str | Path, config: Any) -> dict[str, Any] | None:
    """The saved state if it exists and belongs to ``config``; None to start fresh."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: never resume from it silently
        raise ValueError(f"{path}: cannot read the training state ({e}); delete it to start over") from e
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: training state format {state.get('format')}, expected {STATE_FORMAT}")
    if state["config_hash"] != config_hash(config):
        log.warning("%s was written with a different config: starting over (old state is replaced)", path)
        return None
    log.info("resuming from %s at step %d", path, state["step"])
    return state
