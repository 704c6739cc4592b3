"""Training time, one definition for every run.

Training time is the host clock's seconds over the stretches of training steps, each stretch ending when the
device has finished its work (:meth:`TrainingClock.stop` waits for it). Compilation and CUDA-graph capture (done
before the first stretch starts), validation, checkpoints and exports fall between stretches and are not
counted. On CUDA the host also waits for the device every ``SYNC_EVERY`` steps, so the running value read
between pauses (:meth:`TrainingClock.elapsed`: a time budget, a schedule over time) never runs more than a
few steps ahead of the device's work.
"""

from __future__ import annotations

import time

from .runtime import Runtime

SYNC_EVERY = 25  # steps between host-device synchronisations, so the host clock tracks the device's work


class TrainingClock:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._start: float | None = None

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        self._start = time.perf_counter()

    def tick(self, step: int) -> None:
        """After training step ``step`` (1-based): on CUDA, every ``SYNC_EVERY`` steps, wait for the device."""
        if self.runtime.cuda and step % SYNC_EVERY == 0:
            self.runtime.sync()

    def elapsed(self) -> float:
        """Seconds of the current stretch so far, without waiting for the device (0 when stopped)."""
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def stop(self) -> float:
        """End the current stretch once the device is done; its seconds (0 when none was running)."""
        if self._start is None:
            return 0.0
        self.runtime.sync()
        seconds = time.perf_counter() - self._start
        self._start = None
        return seconds
