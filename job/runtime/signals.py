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
