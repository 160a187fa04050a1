"""Stopping a run cleanly from outside: a signal (SIGTERM, SIGINT, SLURM's SIGUSR1 before
preemption, SIGHUP when the terminal went away) or the deadline of `--time-limit`. The run finishes
its step, the resume point is saved (ResumePoints) and the run ends `interrupted`. Under DDP the
ranks agree at the end of a check window, so that all stop after the same step."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

from mlflow_core.training.callbacks.base import Callback

# the signals that stop a run with a resume checkpoint (SIGUSR1: SLURM's warning before preemption;
# SIGHUP: the terminal or SSH session went away)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
TIME_LIMIT = "time_limit"  # Trainer.signal_received when the deadline, not a signal, stopped the run


class Interruption(Callback):
    def __init__(self, stop_on_signals: bool, deadline: float | None):
        self.stop_on_signals = stop_on_signals  # SIGTERM/SIGINT: finish the step, save resume.pt, stop
        self.deadline = deadline  # time.monotonic(): past it, stop as on a signal (under DDP rank 0 decides)
        self.received: int | str | None = None  # a signal number, or TIME_LIMIT
        self.agreed = False  # under DDP: some rank received one (agreed at a window's end)
        self._previous: dict[int, Any] = {}

    def requested(self, t: Any) -> bool:
        """Stop now? Alone as soon as a signal arrived; under DDP once the ranks agreed."""
        return self.agreed if t.strategy.distributed else self.received is not None

    def on_fit_start(self, t, s) -> None:
        """First SIGTERM/SIGINT/SIGUSR1/SIGHUP: finish the current step, save resume.pt, stop. A second
        SIGINT raises KeyboardInterrupt at once (the default handler is back after the first)."""
        if not self.stop_on_signals or threading.current_thread() is not threading.main_thread():
            return

        def on_signal(signum: int, _frame: Any) -> None:
            self.received = signum
            t.log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        self._previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}

    def on_step_end(self, t, s, step) -> None:
        if self.deadline is not None and self.received is None and time.monotonic() >= self.deadline:
            self.received = TIME_LIMIT
            t.log.warning("time limit reached: stopping after step %d", s.global_step)

    def on_window_end(self, t, s, window) -> None:
        if t.strategy.distributed:
            self.agreed = t.strategy.any(self.received is not None, t.device)

    def stop_reason(self, step: int) -> str:
        name = "the time limit" if self.received == TIME_LIMIT else signal.Signals(self.received or signal.SIGTERM).name
        return f"{name} after step {step}; resumable from checkpoints/resume.pt"

    def on_fit_end(self, t, s) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
