"""Reading a text file the user named, with one set of messages for every way it can fail."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from job.errors import RetryableError, UserError

# A path that can never be read, whatever a retry does: exit 2, not 75.
PATH_ERRORS = (errno.ELOOP, errno.ENOTDIR, errno.ENAMETOOLONG, errno.EINVAL)
UNREADABLE = (*PATH_ERRORS, errno.EACCES, errno.EPERM)  # a data file the job may not read
DATA_LIMIT = 2 << 30  # a data file larger than 2 GiB is read whole into memory several times over: refused
EXCERPT = 60  # characters of a file's content a message may quote


def excerpt(value: object, limit: int = EXCERPT) -> str:
    """`repr(value)` cut to about `limit` characters: what a message quotes of a file's content, never more
    (a data file linked to /proc/self/environ must not print the environment into a batch log)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 10]}…({len(str(value)):,} characters)"


@contextlib.contextmanager
def read_failures(what: str, path: Path, permanent: tuple[int, ...]) -> Iterator[None]:
    """A failed open or read as the job's own error: UserError (exit 2) when no retry can help (missing,
    a folder, an errno in `permanent`), RetryableError (75) for the rest (a vanished mount, an I/O error)."""
    try:
        yield
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        if exc.errno in permanent:
            raise UserError(f"{what} {path} cannot be read: {exc.strerror}") from None
        raise RetryableError(f"could not read {what} {path}: {exc.strerror or exc}") from None


def read_text(path: Path, what: str, limit: int | None = None) -> str:
    """The UTF-8 text of `path`. Missing, a folder, a link loop, larger than `limit` bytes or not UTF-8:
    UserError naming `what` and the path (and the line of a bad byte). Any other read failure (a
    vanished mount, an I/O error) is a RetryableError."""
    with read_failures(what, path, PATH_ERRORS):
        if limit is None:
            raw = path.read_bytes()
        else:
            with path.open("rb") as handle:  # never more than the limit: `--config /dev/zero` ends here
                raw = handle.read(limit + 1)
    if limit is not None and len(raw) > limit:
        raise UserError(f"{what} {path} is larger than {limit:,} bytes; is it the right file?")
    return _decoded(raw, path)


def read_data_file(path: Path, folder: Path, what: str = "data file", limit: int = DATA_LIMIT,
                   head: int | None = None) -> str:  # fmt: skip
    """The UTF-8 text of a data file in `folder` (data_dir, or the task's folder in the PaddleNLP cache),
    read as the records are: a regular file only, at most `limit` bytes, and never through a link that
    leaves `folder` (a link to /proc/self/environ or /etc/passwd; a link inside the folder is followed).
    A FIFO, a device (/dev/zero), a folder or a socket is a UserError naming the file, at once: no read
    blocks and none fills memory. With `head`, only the file's first `head` bytes (a preflight's peek;
    a character cut in two at the end is dropped)."""
    real, inside = path.resolve(), folder.resolve()
    if real != inside and inside not in real.parents:
        raise UserError(f"{what} {path} is a symbolic link to a file outside {folder}: "
                        "the job reads data only inside its folder; copy the file in")  # fmt: skip
    with read_failures(what, path, UNREADABLE):
        descriptor = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    info = os.fstat(descriptor)  # before fdopen: Python's open refuses a folder with EISDIR
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{what} {path} is {file_kind(info.st_mode)}, not a file of records")
        raise UserError(f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} the job reads; "
                        "sample it into a smaller file")  # fmt: skip
    with os.fdopen(descriptor, "rb") as handle, read_failures(what, path, ()):
        raw = handle.read(info.st_size + 1 if head is None else head)  # never more than the file holds
    if len(raw) > limit:  # it grew while being read
        raise UserError(f"{what} {path} is more than the {limit:,} bytes the job reads")
    if head is not None and len(raw) == head:
        raw = raw[: raw.rfind(b"\n") + 1] or raw  # whole lines only
    return _decoded(raw, path)


def file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"


def lines_of(text: str) -> list[str]:
    """The lines of a text file, split at "\\n" alone (with a "\\r" before it dropped). `str.splitlines`
    also splits at U+2028, U+0085 and other separators that JSON strings may hold raw (Python's own
    `json.dumps(..., ensure_ascii=False)` writes them), which broke valid records and shifted the line
    numbers of every message after them."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _decoded(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None
