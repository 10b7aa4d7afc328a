"""Every failure as the exit code a queue understands, in one place: 0 success, 1 training failed (NaN
loss), 2 bad input (config, data, model, device, a GPU node or image that must change), 75 retryable
(download, I/O, a passing GPU fault), 128+N killed by signal N. The CLI's commands and the workers of
`job run --workers` map exceptions through `failure`."""

from __future__ import annotations

import errno
from collections.abc import Iterable
from pathlib import Path

from job.errors import Interrupted, RetryableError, TrainingDiverged, UserError
from job.runtime.device_faults import as_job_error, out_of_memory

# Permissions and read-only mounts stay so on a retry: exit 2. A full disk or a vanished mount may not.
# ELOOP: a planted link; ENAMETOOLONG: a path the file system can never hold; ENOTDIR and EISDIR: a file
# where a folder must be, or a folder where a file must be (output_dir/results a file, a record a folder).
PERMANENT_IO_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP, errno.ENAMETOOLONG, errno.ENOTDIR,
                       errno.EISDIR)  # fmt: skip
KIND_FIXES = {errno.ENOTDIR: "a file stands where the job needs a folder: move it away",
              errno.EISDIR: "a folder stands where the job writes a file: move it away"}  # fmt: skip


def io_failure(exc: OSError, where: Path | str) -> tuple[Exception, int]:
    """An OSError as the job's own error: UserError (2) when a retry cannot help, else RetryableError (75)."""
    if exc.errno in PERMANENT_IO_ERRORS:
        fix = f" ({KIND_FIXES[exc.errno]})" if exc.errno in KIND_FIXES else ""
        return UserError(f"cannot write to {where}: {exc.strerror}{fix}"), UserError.exit_code
    return RetryableError(f"I/O error: {exc}"), RetryableError.exit_code


def failure(exc: BaseException, io_where: str) -> tuple[Exception, int] | None:
    """`exc` as (the job's error, its exit code), or None for an exception that is a bug (a traceback).
    A GPU, driver or NCCL fault (Paddle raises them as OSError or RuntimeError) is told apart from a
    real I/O error first (job.runtime.device_faults); an OSError left is I/O on `io_where`."""
    if isinstance(exc, Interrupted | UserError | RetryableError | TrainingDiverged):
        return exc, exc.exit_code
    if isinstance(exc, MemoryError):  # loading, training, saving, predict: wherever it happens
        return out_of_memory(exc), UserError.exit_code
    if isinstance(exc, OSError | RuntimeError):
        fault = as_job_error(exc)
        if fault is not None:
            return fault, fault.exit_code
        if isinstance(exc, OSError):
            return io_failure(exc, exc.filename or io_where)
    return None


def most_telling(codes: Iterable[int]) -> int:
    """Of several processes' exit codes, the one a queue should act on: 2 (the input or node must change)
    before 75 (a retry may pass) before any other failure; 0 when none failed."""
    failed = [code for code in codes if code != 0]
    for wanted in (UserError.exit_code, RetryableError.exit_code):
        if wanted in failed:
            return wanted
    return failed[0] if failed else 0
