"""The job's own error types; the CLI maps each to an exit code."""

from __future__ import annotations


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
