"""The training skeleton every trainer shares: process group, seeding, resumable state, precision
(autocast and fp16 loss scaling, ``pvdm.utils.device.Precision``), logging, progress and ``max_steps``. A trainer keeps only its step and its evaluation::

    with TrainingRun(out_dir, run_config, seed=..., steps=..., amp=..., ...) as run:
        model = ...; opt = ...
        scaler = run.precision.scaler()        # fp16 loss scaling (a pass-through otherwise)
        run.register(model=model, opt=opt, scaler=scaler)  # everything state.pt must hold
        run.resume()                           # continue from state.pt when it is the same computation
        for step in run.steps():               # start .. steps-1 (or max_steps), until run.stop(...)
            loss = ...                         # the trainer's step
            run.log(step + 1, {"loss": loss})  # progress bar; log.jsonl + TensorBoard every log_every
            run.checkpoint(step + 1)           # state.pt every save_every, at the end and on a stop

Randomness of step k comes from ``run.generator(k, stream)`` and the data from the step index, so
a killed and resumed run computes exactly what an uninterrupted one does. ``run_config`` is the
run's identity: the trainer puts its settings and content hashes of its inputs there, the run adds
what changes the numbers (``numerics``); a state.pt of another identity is set aside, never
resumed. The process group is torn down on every exit path of the ``with`` block.

SIGTERM (Slurm's preemption and time-limit warning) or Ctrl-C ends the current step, saves the
complete state and raises :class:`pvdm.train.signals.Interrupted`; ``pvdm`` then exits with 75.
The output folder is locked (:class:`pvdm.utils.io.FolderLock`) for the run's lifetime.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pvdm.train import distributed
from pvdm.train.logger import TrainLogger
from pvdm.train.signals import Interrupted
from pvdm.train.state import belongs_to, read_state, save_state, set_aside, set_rng_state
from pvdm.utils import device as device_utils
from pvdm.utils.io import FolderLock
from pvdm.utils.progress import Progress
from pvdm.utils.seeding import step_generator

log = logging.getLogger("pvdm.train")


class TrainingRun:
    def __init__(
        self,
        out_dir: str | Path,
        run_config: dict[str, Any],
        *,
        seed: int,
        steps: int,
        save_every: int,
        log_every: int,
        max_steps: int | None = None,
        device: str | None = None,
        amp: str = "none",
        desc: str = "training",
    ):
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.total_steps = steps  # what the config asks for
        self.stop_at = steps if max_steps is None else min(steps, max_steps)  # where this process stops
        self.save_every, self.log_every, self.desc = save_every, log_every, desc
        self.dist = distributed.setup(device)
        self.device = self.dist.device
        self.precision = device_utils.Precision(self.device, amp)  # autocast + fp16 loss scaling of every step
        self.run_config = {**run_config, "numerics": device_utils.numerics(self.device, self.dist.world_size)}
        self.state_path = self.out_dir / "state.pt"
        # One writer per folder (the main rank holds the lock for all): taken before any file is touched.
        self._lock = FolderLock(self.out_dir, desc) if self.dist.is_main else None
        self.logger = TrainLogger(self.out_dir, enabled=self.dist.is_main)
        self._signal: str | None = None  # set by SIGTERM/SIGINT: save and exit at the next step boundary
        self._handlers: dict[int, Any] = {}
        self._saved_at: int | None = None
        self.parts: dict[str, Any] = {}
        self.start = self.done = 0
        self.stop_reason: str | None = None
        self._bar: Progress | None = None
        torch.manual_seed(seed)

    def check_batch(self, batch: int, key: str) -> None:
        """The global batch is the config's whatever the process count: it must split evenly."""
        if batch % self.dist.world_size:
            raise ValueError(f"{key} = {batch} does not split over {self.dist.world_size} processes (each rank "
                             f"takes batch / processes); choose a multiple of {self.dist.world_size}")

    # --- state -------------------------------------------------------------------------------------

    def register(self, **parts: Any) -> None:
        """Objects with ``state_dict()``/``load_state_dict()`` that state.pt holds (models, optimisers,
        grad scalers, EMA, early stopping ...)."""
        self.parts.update(parts)

    def resume(self) -> bool:
        """Load state.pt when it exists and is this computation (same identity); True if it did.
        A state of another identity is set aside (state.stale.pt) and the run starts at step 0."""
        state = read_state(self.state_path)
        if state is not None and not belongs_to(state, self.run_config):
            distributed.barrier(self.dist)  # every rank has read it before the main rank moves it
            if self.dist.is_main:
                set_aside(self.state_path, state, self.run_config)
            state = None
        if state is not None:
            log.info("resuming from %s at step %d", self.state_path, state["step"])
            for name, obj in self.parts.items():
                obj.load_state_dict(state[name])
            set_rng_state(state["rng"])
            self.start = self.done = state["step"]
            self.stop_reason = state.get("stop_reason")
        self.logger.truncate_after(self.start)
        return state is not None

    def save(self, step: int) -> None:
        if self.dist.is_main:
            save_state(self.state_path, step, self.run_config, stop_reason=self.stop_reason, **self.parts)
        distributed.barrier(self.dist)
        self._saved_at = step

    def checkpoint(self, done: int) -> None:
        """Save when due: every ``save_every`` steps, at the last step, and when training stops."""
        if done % self.save_every == 0 or done == self.stop_at or self.stop_reason is not None:
            self.save(done)

    # --- the loop ----------------------------------------------------------------------------------

    def steps(self) -> Iterator[int]:
        """Step indices from where the run stands to ``stop_at``, until ``stop`` is called."""
        with Progress(self.stop_at, self.desc, initial=self.start) as bar:
            self._bar = bar
            for step in range(self.start, self.stop_at):
                if self.stop_reason is not None:
                    break
                yield step
                self.done = step + 1
                if distributed.any_rank(self._signal is not None, self.dist):
                    self._stop_on_signal()
        self._bar = None

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now (state.pt holds the last saved step)
        self._signal = name
        log.warning("%s received: saving the complete state at the end of this step, then exiting "
                    "(Ctrl-C again to stop at once)", name)

    def _stop_on_signal(self) -> None:
        if self._saved_at != self.done:
            self.save(self.done)
        raise Interrupted(self._signal or "a signal on another rank", self.done, self.state_path)

    def stop(self, reason: str) -> None:
        """End training after this step (early stopping, divergence); the reason is saved."""
        self.stop_reason = reason

    @property
    def completed(self) -> bool:
        """Training is over: all steps done or stopped early (not merely cut short by max_steps)."""
        return self.done >= self.total_steps or self.stop_reason is not None

    def generator(self, step: int, stream: int) -> torch.Generator:
        return step_generator(self.seed, step, stream)

    def autocast(self):  # noqa: ANN201 - a context manager
        return self.precision.autocast()

    def log(self, done: int, values: dict[str, float], progress: float | None = None) -> None:
        """Advance the progress bar; every ``log_every`` steps (and at the end) write ``values``."""
        if self._bar is not None:
            self._bar.update(1, **({"loss": progress} if progress is not None else {}))
        if done % self.log_every == 0 or done == self.stop_at:
            self.logger.log(done, distributed.mean_across_ranks(values, self.dist))

    # --- lifetime ----------------------------------------------------------------------------------

    def __enter__(self) -> TrainingRun:
        # Slurm sends SIGTERM before SIGKILL on preemption and time limits; Ctrl-C sends SIGINT.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self.logger.close()
        distributed.teardown(self.dist)
        if self._lock is not None:
            self._lock.release()
