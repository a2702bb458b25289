"""Stopping a run cleanly when it is told to go: SIGTERM (schedulers, `kill`), SIGINT (Ctrl-C) or a JAX
multihost preemption notice.

A signal only sets a flag; the run loop asks `PreemptionGuard.should_stop()` at each step boundary, every
process at the same point, so all processes stop after the same step even when the signal reached one of
them. The loop then saves that step synchronously, flushes its metrics and raises `Preempted`; the command
line turns it into EXIT_CODE. A second signal of the same kind while stopping gives the signal back to the
previous handler (by default: the process dies at once), for a user who does not want to wait.
"""

from __future__ import annotations

import os
import signal
import threading
import types
from typing import Any

from jax.experimental import multihost_utils

from memagent_jax.parallel import collectives

__all__ = ["EXIT_CODE", "Preempted", "PreemptionGuard"]

# sysexits.h EX_TEMPFAIL, "temporary failure; the user is invited to retry": distinct from 143 (128 + SIGTERM,
# what a run killed before it could save reports), from 1 (an error) and from 0 (finished).
EXIT_CODE = 75


class Preempted(Exception):
    """Raised once the stop is agreed and the last completed step is saved."""

    def __init__(self, where: str, signal_name: str | None):
        self.where, self.signal_name = where, signal_name
        why = f" by {signal_name}" if signal_name else ""
        super().__init__(f"preempted{why} at {where}: checkpoint saved; rerun the same command to continue "
                         f"(exit code {EXIT_CODE})")


class PreemptionGuard:
    """A context manager: installs the handlers on entry (main thread only), restores the previous ones on exit."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.received: str | None = None  # the first signal's name, on this process
        self._previous: dict[int, Any] = {}
        self._sync_points = 0  # calls so far: JAX's sync point needs an id that grows alike on every process

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():  # Python allows handlers there only
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()

    def _handle(self, number: int, frame: types.FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received == name:  # asked twice: stop waiting for the step to finish
            signal.signal(number, self._previous.get(number, signal.SIG_DFL))
            signal.raise_signal(number)
            return
        self.received = self.received or name
        # os.write, not logging: a handler may interrupt the main thread inside a logging call.
        os.write(2, f"{name} received: stopping after the current step (again to stop at once)\n".encode())

    def should_stop(self) -> bool:
        """Whether the run stops now; a collective: every process calls it at the same step boundary."""
        self._sync_points += 1
        notice = multihost_utils.reached_preemption_sync_point(self._sync_points)
        stop = collectives.agree_any(self.received is not None or notice)
        if stop and self.received is None:
            self.received = "a preemption notice" if notice else "a signal to another process"
        return stop

    def requested_here(self) -> bool:
        """This process's own flag, no collective (for work only process 0 does, such as evaluation)."""
        return self.received is not None
