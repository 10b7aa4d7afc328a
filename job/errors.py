"""The job's own error types; the CLI maps each to an exit code."""

from __future__ import annotations

import re


class UserError(Exception):
    """Something the user gave us is wrong (config, data, model, device). Exit code 2."""

    exit_code = 2


class RetryableError(Exception):
    """A failure that may pass on its own (network, I/O). Exit code 75 (EX_TEMPFAIL)."""

    exit_code = 75


class Interrupted(Exception):
    """Training was stopped by a signal; finished strategies' results are kept."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


class TrainingDiverged(Exception):
    """The loss became NaN or infinite. Exit code 1: a real failure, not a usage error."""

    exit_code = 1


_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]+@")


def redacted(text: str) -> str:
    """`text` with the user and password of every URL in it masked (https://user:secret@host -> https://***@host):
    a mirror's credentials (PPNLP_ENDPOINT, an object store's URL) never reach a log or a terminal."""
    return _CREDENTIALS.sub(r"\1***@", text)
