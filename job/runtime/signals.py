"""SIGTERM and Ctrl-C as a request to stop at the next step boundary, so a run never dies mid-write:
finished runs' results are kept and the job exits 128 + the signal (job.errors.Interrupted)."""

from __future__ import annotations

import signal
from typing import Any

from job.errors import Interrupted


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop stops at the next step boundary instead of dying mid-write."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def install(self) -> None:
        """Idempotent; called again right before training in case a library replaced the handlers."""
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)

    def checkpoint(self) -> None:
        """Between phases: take the handlers back (a library may have replaced them) and stop if asked."""
        self.install()
        self.raise_if_requested()


def import_paddle(stop: StopRequest) -> None:
    """Import Paddle with SIGTERM and SIGINT held back, then take the handlers back. Paddle installs C++
    handlers when imported (paddle.disable_signal_handler's docstring) that turn a SIGTERM into a crash dump
    and death by the signal: a stop sent while a process was importing it (a worker of `--workers` just
    started) lost the finished runs' exit 143 and left orphans. A signal sent meanwhile is delivered to
    `stop` once the import is done."""
    held = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        import paddle  # noqa: F401
    finally:
        stop.install()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
