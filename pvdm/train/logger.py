"""Training logs: JSON lines (one object per logged step) and TensorBoard, main rank only."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pvdm.utils.io import atomic_write_text, read_log_rows

log = logging.getLogger("pvdm.train")


class TrainLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "log.jsonl"
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: (float(v) if hasattr(v, "__float__") else v) for k, v in values.items()})
        with open(self.path, "a") as f:  # appending keeps the log of a resumed run continuous
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run redoes those steps) and a torn last line."""
        if not self.enabled or not self.path.exists():
            return
        rows = [r for r in read_log_rows(self.path) if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
