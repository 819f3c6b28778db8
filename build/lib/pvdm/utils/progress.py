"""Progress reporting: a tqdm bar on a terminal, plain log lines in batch logs (Slurm, Snakemake)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("pvdm")


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
        )


def is_interactive() -> bool:
    return sys.stderr.isatty()


class Progress:
    """Counts work units; draws tqdm on a TTY, else logs a line every ``log_every_s`` seconds."""

    def __init__(self, total: int | None, desc: str, initial: int = 0, log_every_s: float = 10.0):
        self.total, self.desc, self.n = total, desc, initial
        self.log_every_s = log_every_s
        self._bar = (
            tqdm(total=total, desc=desc, initial=initial, dynamic_ncols=True) if is_interactive() else None
        )
        self._t0 = self._last = time.monotonic()
        self._postfix: dict[str, str] = {}

    def update(self, n: int = 1, **postfix: float | str) -> None:
        self.n += n
        if postfix:
            self._postfix = {k: (f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in postfix.items()}
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(self._postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.log_every_s or (self.total is not None and self.n >= self.total):
            self._last = now
            rate = self.n / max(now - self._t0, 1e-9)
            total = f"/{self.total}" if self.total is not None else ""
            extra = " ".join(f"{k}={v}" for k, v in self._postfix.items())
            log.info("%s: %d%s (%.2f/s) %s", self.desc, self.n, total, rate, extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc) as bar:
        for item in items:
            yield item
            bar.update(1)
