"""Reading a text file the user named, with one set of messages for every way it can fail."""

from __future__ import annotations

import errno
from pathlib import Path

from job.errors import RetryableError, UserError

# A path that can never be read, whatever a retry does: exit 2, not 75.
PATH_ERRORS = (errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EINVAL)


def read_text(path: Path, what: str, limit: int | None = None) -> str:
    """The UTF-8 text of `path`. Missing, a folder, a link loop, larger than `limit` bytes or not UTF-8:
    UserError naming `what` and the path (and the line of a bad byte). Any other read failure (a
    vanished mount, an I/O error) is a RetryableError."""
    try:
        if limit is None:
            raw = path.read_bytes()
        else:
            with path.open("rb") as handle:  # never more than the limit: `--config /dev/zero` ends here
                raw = handle.read(limit + 1)
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        if exc.errno in PATH_ERRORS:
            raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None
        raise RetryableError(f"could not read {what} {path}: {exc}") from None
    if limit is not None and len(raw) > limit:
        raise UserError(f"{what} {path} is larger than {limit:,} bytes; is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
