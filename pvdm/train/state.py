"""Complete, resumable training state, written atomically.

``state.pt`` holds everything a run needs to continue exactly where it stopped: model(s),
optimizers, grad scalers, discriminators, EMA, step, RNG states, the resolved config and the
early-stopping record. Rerunning the same command resumes from it only into the same computation:
the run's identity (``config`` below) holds its settings, content hashes of every input (clip
stores, the starting checkpoint) and what changes the numbers (device type, CPU threads, process
count, torch version). A state of another identity is set aside as ``state.stale.pt`` and the run
starts from step 0, logging which keys differ; finished work is never "resumed" on new inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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


def read_state(path: str | Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none; a torn or foreign file is an error."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: never resume from it silently
        raise ValueError(f"{path}: cannot read the training state ({e}); delete it to start over") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: training state format {found}, expected {STATE_FORMAT}")
    return state


def belongs_to(state: dict[str, Any], config: Any) -> bool:
    return state["config_hash"] == config_hash(config)


def changed_keys(saved: Any, current: Any, prefix: str = "", limit: int = 8) -> list[str]:
    """Dotted keys whose values differ between two run identities (nested dicts compared key by key)."""
    if not (isinstance(saved, dict) and isinstance(current, dict)):
        return [prefix or "<identity>"] if saved != current else []
    out: list[str] = []
    for key in sorted(set(saved) | set(current)):
        out += changed_keys(saved.get(key), current.get(key), f"{prefix}{key}.", limit)
    return [k.rstrip(".") for k in out][:limit]


def set_aside(path: str | Path, state: dict[str, Any], config: Any) -> Path:
    """Move a state of another computation out of the way (``state.stale.pt``, replacing an older one)."""
    path = Path(path)
    aside = path.with_name("state.stale.pt")
    os.replace(path, aside)
    keys = changed_keys(state.get("config"), config)
    log.warning("%s (step %d) belongs to another computation (changed: %s): set aside as %s; starting from "
                "step 0", path, state["step"], ", ".join(keys) or "?", aside.name)
    return aside
