"""Stopping a run cleanly on SIGTERM (a preemption notice) or SIGINT (Ctrl-C).

The training loop asks `Watcher.should_stop(step)` after every step; once it says yes,
the loop saves a checkpoint of that step (the ordinary atomic save) and the run ends
with `Preempted`, which the CLI reports in one line with exit code 128 + the signal's
number (143 for SIGTERM, 130 for SIGINT).

One process: a handler sets a flag; the step in flight, an evaluation, a sample grid or
a checkpoint write in progress finishes first. A second signal aborts: nothing more is
saved, and the checkpoints already on disk stay whole (orbax renames a checkpoint into
place only when it is complete). In Python it raises KeyboardInterrupt (the run's
files and threads are closed on the way out); where `exit_on_second_signal()` was
called (the CLI) the process ends at once with one line and 128 + the signal's number,
as a SIGKILL would end it.

Several processes (`jax.distributed` initialized): they must save the same step. JAX's
preemption service catches SIGTERM in any process and agrees with the others on a step
(`multihost_utils.reached_preemption_sync_point`), which every process reaches; a SIGINT
is handed to that service as a SIGTERM of its own process. Without the service
(`jax_enable_preemption_service` off) signals keep their default effect.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import jax

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_EXIT_ON_SECOND_SIGNAL = [False]


def exit_on_second_signal(enabled: bool = True) -> None:
    """A second signal ends the process at once (`os._exit`) instead of raising
    KeyboardInterrupt: for command-line tools, where nothing is left to close."""
    _EXIT_ON_SECOND_SIGNAL[0] = enabled


class Preempted(Exception):
    """A run stopped by a signal after saving the checkpoint of `step`; `exit_code` is
    128 + the signal's number (SIGTERM for a process stopped because another was)."""

    def __init__(self, message: str, step: int, signum: int):
        super().__init__(message)
        self.step, self.signum = step, signum
        self.exit_code = 128 + signum


def _sync_manager():
    """JAX's preemption sync manager, or None (one process, or the service off)."""
    from jax._src import distributed  # noqa: PLC0415 (its public face raises when absent)

    state = distributed.global_state
    return state.preemption_sync_manager if state.client is not None else None


class Watcher:
    """Installs the handlers (in the main thread) from `__enter__` to `__exit__`."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._multi = jax.process_count() > 1 and _sync_manager() is not None

    def __enter__(self) -> Watcher:
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set from the main thread
        if jax.process_count() > 1 and not self._multi:
            log.warning("JAX's preemption service is off: SIGTERM and SIGINT stop the run "
                        "without a checkpoint")
            return self
        # Several processes: SIGTERM stays with JAX's preemption notifier.
        for signum in (signal.SIGINT,) if self._multi else SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: stop now, save nothing
            if _EXIT_ON_SECOND_SIGNAL[0]:
                os.write(sys.stderr.fileno(), (  # on a line of its own (after a progress bar)
                    f"\njaxar: {signal.Signals(signum).name} again: stopped at once without "
                    f"saving; a re-run resumes from the last checkpoint on disk\n").encode())
                os._exit(128 + signum)
            self.__exit__()
            raise KeyboardInterrupt
        self.signum = signum
        if self._multi:  # JAX's notifier tells every process
            os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """Whether the run stops after `step` (saving it). Every process calls this after
        every step (the multi-process protocol needs each step)."""
        if self._multi:
            from jax.experimental import multihost_utils  # noqa: PLC0415

            return multihost_utils.reached_preemption_sync_point(step)
        return self.signum is not None

    def received(self) -> int:
        """The signal that stops the run (SIGTERM where another process received it)."""
        return self.signum if self.signum is not None else int(signal.SIGTERM)
