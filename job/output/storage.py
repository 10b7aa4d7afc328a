"""Where the job writes: a local (or NFS) folder, or an object-store prefix (s3://bucket/prefix,
gs://bucket/prefix) through fsspec. Both give the same operations on names relative to the output:
read the run records, write a file whole or not at all, let a library fill a folder, and merge.

Merging differs. A local folder merges under an flock, so the last task to finish has seen every
record. Object stores have no locks, so the merge there is lock-free: a task writes results.json, the
plots and the report only when it sees every planned run of its config; every task that sees the full
set writes the same bytes, and a task that sees fewer writes nothing but its own record."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from job.errors import RetryableError, UserError
from job.output.layout import (
    ARTIFACTS_FOLDER,
    CHECKPOINTS_FOLDER,
    FILE_MODE,
    LEARNING_PLOT,
    LOCK_FILE,
    LOSS_PLOT,
    PARETO_PLOT,
    RESULTS_FILE,
    RESULTS_FOLDER,
    SPECTRUM_PLOT,
    TENSORBOARD_FOLDER,
    VISUALDL_FOLDER,
    below,
    make_folders,
    settle_modes,
)

OBJECT_STORE_SCHEMES = ("s3", "gs")


def url_scheme(value: str) -> str | None:
    """'s3' for 's3://bucket/x'; None for a plain path (also Windows-style 'C:\\x')."""
    head, separator, _ = value.partition("://")
    return head.lower() if separator and head.isalnum() and len(head) > 1 else None


PATH_MAX = 4096  # Linux's limit on a whole path (<linux/limits.h>)
# The longest name the job writes below output_dir: artifacts/<run key>/merged/model.safetensors and the
# like, with a grid run key (lora_r64_a128_lr0.00050000001_s4294967295 is 47 characters) and room to spare.
LONGEST_NAME_BELOW = 200


def output_dir_problem(value: str) -> str | None:
    """Why `value` cannot be an output_dir, or None when it can."""
    scheme = url_scheme(value)
    if scheme is None:
        try:
            full = str(Path(value).expanduser().absolute())
        except RuntimeError:  # `~user` of no user, or no home folder: the folder check says so later
            full = value
        longest = len(full) + LONGEST_NAME_BELOW
        if longest > PATH_MAX:
            return (
                f"a path of {len(value):,} characters: the job writes up to {LONGEST_NAME_BELOW} more below it, "
                f"beyond the {PATH_MAX:,} a Linux path may have; use a shorter folder"
            )
        return None
    if scheme not in OBJECT_STORE_SCHEMES:
        known = ", ".join(f"{name}://" for name in OBJECT_STORE_SCHEMES)
        return f"{scheme}:// is not supported: use a folder, or an object-store prefix ({known})"
    bucket, _, prefix = value.split("://", 1)[1].partition("/")
    if not bucket:
        return f"{value!r} names no bucket: use {scheme}://BUCKET/PREFIX"
    if not BUCKET_NAMES[scheme].fullmatch(bucket) or ".." in bucket:
        return f"{bucket!r} is not a valid {scheme}:// bucket name ({BUCKET_RULES[scheme]})"
    if any(part in (".", "..") for part in prefix.split("/")):
        return f"{value!r}: an object-store prefix has no '.' or '..' parts (keys are not paths)"
    return None


# The services' naming rules, checked before anything runs: an invalid name would otherwise reach the
# client library, which answers with an error of its own (a retry would meet it again).
BUCKET_NAMES = {
    "s3": re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"),
    "gs": re.compile(r"(?=.{3,63}$|(?=.*\.).{3,222}$)[a-z0-9][a-z0-9._-]*[a-z0-9]"),
}
BUCKET_RULES = {
    "s3": "3-63 characters: lower-case letters, digits, dots and hyphens, starting and ending with a letter or digit",
    "gs": "3-63 characters (222 with dots): lower-case letters, digits, dots, hyphens and underscores, starting "
    "and ending with a letter or digit",
}


def object_prefix(url: str) -> str:
    """bucket/prefix of an s3:// or gs:// URL, normalised once: no empty parts (s3://b//x and s3://b/x/
    are s3://b/x; the store writes b//x as b/x, and a listing of b//x would find nothing)."""
    return "/".join(part for part in url.split("://", 1)[1].split("/") if part)


class Output(ABC):
    """The output folder or prefix. Names are relative ('results/lora.json', 'artifacts/lora')."""

    url: str
    lock_free: bool  # True: merge only with every planned run present (no lock to take)

    def where(self, name: str = "") -> str:
        """A name as the user would write it, for messages and the log."""
        return f"{self.url.rstrip('/')}/{name}" if name else self.url

    @abstractmethod
    def check_writable(self) -> list[Path]:
        """Fail before any compute when nothing can be written; returns local folders it created."""

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def record_files(self) -> dict[str, bytes]:
        """The content of every results/*.json, by where() name, in name order."""

    @abstractmethod
    def write_text(self, name: str, text: str) -> str:
        """Write a file whole or not at all (a killed task leaves the old one or none); returns where()."""

    @abstractmethod
    def file(self, name: str) -> contextlib.AbstractContextManager[Path]:
        """A local path to write the file into; published whole under `name` when the block ends."""

    @abstractmethod
    def folder(self, name: str, whole: bool = False) -> contextlib.AbstractContextManager[Path]:
        """A local folder a library fills (a saved model, VisualDL logs); published under `name`. With
        `whole`, a folder a failed or killed save never leaves half-replaced (a saved model)."""

    @abstractmethod
    def fetched(self, name: str) -> contextlib.AbstractContextManager[Path | None]:
        """A local path holding the file `name` while the block runs, or None when there is none."""

    @abstractmethod
    def remove(self, name: str) -> None:
        """Delete the file `name` if it is there."""

    @contextlib.contextmanager
    def merge_lock(self) -> Iterator[None]:
        yield


# ---------------------------------------------------------------- a local or NFS folder


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that replaces it (mode 644) when the block ends without error."""
    make_folders(path.parent)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=scratch_prefix(path.name), suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, FILE_MODE)  # readable by the host user when written from a container
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


# A scratch file or folder is `.<name>.<host>~<pid>.<random>.tmp` (and a replaced folder `.<name>.old-<hex>`):
# a kill -9 leaves it behind, and the next run on this output removes it when its writer is gone.
SCRATCH = re.compile(r"\.(?P<name>.+?)\.(?:(?P<host>[^~/.]*)~(?P<pid>\d+)\.[^/]*\.tmp|old-[0-9a-f]{8})")
STALE_SECONDS = 6 * 3600  # another host's scratch this old has no writer left (a save takes minutes)


def scratch_prefix(name: str) -> str:
    return f".{name}.{_host()}~{os.getpid()}."


def _host() -> str:
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_scratch(folder: Path, now: float) -> list[Path]:
    """Remove what a killed save left in `folder`: scratch of this host whose process is gone, a
    replaced folder's old copy, and any scratch unchanged for STALE_SECONDS. Never follows a link.
    Returns what it removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = SCRATCH.fullmatch(entry.name)
        if match is None:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        mine = match["host"] == _host() and match["pid"] is not None and not _alive(int(match["pid"]))
        replaced = match["pid"] is None and age > 60  # a moment for its own writer to remove it
        if not (mine or replaced or age > STALE_SECONDS):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


RECORD_LIMIT = 64 << 20  # a record holds a run's predictions and step losses: about 1 MB at TNEWS's full size


def read_record_file(path: Path) -> bytes:
    """A record file's bytes: a regular file only, never through a link, at most RECORD_LIMIT bytes. A
    FIFO would block the merge (under its lock), a link to /dev/zero would fill memory, a folder would
    fail the same way on every retry: each is a UserError naming the file (exit 2)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{path} is a symbolic link, not a result file: remove it") from None
        if exc.errno in (errno.EISDIR, errno.ENOENT):
            raise UserError(f"{path} is not a result file ({exc.strerror}): remove it") from None
        raise RetryableError(f"could not read {path}: {exc.strerror}") from None
    info = os.fstat(descriptor)  # before fdopen: Python's open refuses a folder with EISDIR
    if not stat.S_ISREG(info.st_mode) or info.st_size > RECORD_LIMIT:
        os.close(descriptor)
        if stat.S_ISREG(info.st_mode):
            raise UserError(f"{path} is {info.st_size:,} bytes, larger than any result file ({RECORD_LIMIT:,})")
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "FIFO" if stat.S_ISFIFO(info.st_mode) else "special file"
        raise UserError(f"{path} is a {kind}, not a result file: remove it")
    with os.fdopen(descriptor, "rb") as handle:
        return handle.read(RECORD_LIMIT + 1)


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` where `target` is, by renames in one file system: a rerun's models never sit beside
    an older run's (an adapter of one run and a merged model of another would both load, and disagree).
    A link planted at `target` is replaced, never followed."""
    if not target.is_symlink() and not target.exists():
        os.rename(new, target)
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    os.rename(new, target)
    if old.is_symlink() or not old.is_dir():
        old.unlink()
    else:
        shutil.rmtree(old, ignore_errors=True)


class LocalOutput(Output):
    lock_free = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def where(self, name: str = "") -> str:
        return str(self.root / name) if name else str(self.root)

    def inside(self, name: str) -> Path:
        """root/name, through no link below output_dir (job.output.layout.below)."""
        return below(self.root, name)

    def check_writable(self) -> list[Path]:
        """The probe has an unpredictable name and is created exclusively, so it never follows a planted
        link and never meets another task's probe in a shared folder."""
        created = make_folders(self.root)
        for name in (RESULTS_FOLDER, ARTIFACTS_FOLDER, VISUALDL_FOLDER, TENSORBOARD_FOLDER, CHECKPOINTS_FOLDER):
            path = self.inside(name)
            if path.exists() and not path.is_dir():  # found after training, when the first record is saved
                raise UserError(f"{path} is a file where the job keeps its {name} folder: move it away")
        for name in (RESULTS_FILE, LOSS_PLOT, PARETO_PLOT, LEARNING_PLOT, SPECTRUM_PLOT):
            if self.inside(name).is_dir():
                raise UserError(f"{self.root / name} is a folder where the job writes its {name}: move it away")
        import time

        for name in ("", RESULTS_FOLDER, ARTIFACTS_FOLDER, CHECKPOINTS_FOLDER):
            folder = self.root / name
            sweep_scratch(folder, time.time())
        descriptor, probe = tempfile.mkstemp(dir=self.root, prefix=".write-test-")
        os.close(descriptor)
        os.unlink(probe)
        return created

    def exists(self) -> bool:
        return self.root.is_dir()

    def record_files(self) -> dict[str, bytes]:
        folder = self.inside(RESULTS_FOLDER)  # `job report` reads through no link `job run` would refuse
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        return {str(file): read_record_file(file) for file in files}

    def write_text(self, name: str, text: str) -> str:
        write_atomic(self.inside(name), text)
        return self.where(name)

    def file(self, name: str) -> contextlib.AbstractContextManager[Path]:
        return atomic_path(self.inside(name))

    @contextlib.contextmanager
    def fetched(self, name: str) -> Iterator[Path | None]:
        path = self.inside(name)
        if path.exists() and not path.is_file():
            raise UserError(f"{path} is not a file the job wrote: move it away")
        yield path if path.is_file() else None

    def remove(self, name: str) -> None:
        self.inside(name).unlink(missing_ok=True)

    @contextlib.contextmanager
    def folder(self, name: str, whole: bool = False) -> Iterator[Path]:
        folder = self.inside(name)
        if not whole:  # filled in place: VisualDL logs can be watched while the run trains
            make_folders(folder)
            try:
                yield folder
            finally:
                settle_modes(folder)
            return
        make_folders(folder.parent)
        scratch = Path(tempfile.mkdtemp(dir=folder.parent, prefix=scratch_prefix(folder.name), suffix=".tmp"))
        try:
            yield scratch
            settle_modes(scratch)
            replace_folder(scratch, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # gone after a rename; the half-written one otherwise

    @contextlib.contextmanager
    def merge_lock(self) -> Iterator[None]:
        """flock on output_dir/.lock: works across processes and containers sharing a volume (and NFS)."""
        import fcntl

        make_folders(self.root)
        # O_NOFOLLOW: a planted .lock symlink must not create or lock a file elsewhere. O_NONBLOCK: a FIFO
        # planted as .lock would block the open for ever (a regular file ignores the flag).
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        path = self.root / LOCK_FILE
        try:
            descriptor = os.open(path, flags, FILE_MODE)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):  # a link, a folder, a FIFO with no reader
                raise UserError(f"{path} is not the job's lock file ({exc.strerror}): remove it") from None
            raise
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise UserError(f"{path} is not the job's lock file (not a regular file): remove it")
        with os.fdopen(descriptor, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- an object-store prefix


class ObjectOutput(Output):
    """s3:// (s3fs: the standard AWS credential chain; AWS_ENDPOINT_URL for S3-compatible stores) or
    gs:// (gcsfs: application default credentials). Every object is written by one PUT (a multipart
    upload for big files completes only at the end), so a killed task never leaves a partial object."""

    lock_free = True

    def __init__(self, url: str) -> None:
        self.scheme = url_scheme(url) or ""
        self.path = object_prefix(url)
        self.url = f"{self.scheme}://{self.path}"
        self.bucket = self.path.split("/", 1)[0]
        self._fs: Any = None

    @property
    def fs(self) -> Any:
        if self._fs is None:
            with self.errors(self.url):
                import fsspec

                quiet_libraries()
                # No listing cache: other array tasks add records while this one runs.
                self._fs = fsspec.filesystem(self.scheme, use_listings_cache=False, skip_instance_cache=True)
        return self._fs

    def key(self, name: str) -> str:
        return f"{self.path}/{name}"

    def check_writable(self) -> list[Path]:
        with self.errors(f"{self.scheme}://{self.bucket}"):
            self.fs.info(self.bucket)  # not exists(): it answers False for an unreachable endpoint too
        probe = f".write-test-{uuid.uuid4().hex}"
        with self.errors(self.where(probe)):
            self.fs.pipe_file(self.key(probe), b"")
        with contextlib.suppress(Exception):  # write without delete rights is enough for the job
            self.fs.rm_file(self.key(probe))
        return []

    def exists(self) -> bool:
        with self.errors(self.url):
            return bool(self.fs.exists(self.key(RESULTS_FOLDER)))

    def record_files(self) -> dict[str, bytes]:
        with self.errors(self.where(RESULTS_FOLDER)):
            found = self.fs.glob(self.key(f"{RESULTS_FOLDER}/*.json"), detail=True)
            keys = sorted(found)
            for key in keys:  # never fetch an object larger than any record, nor a "folder"
                if found[key].get("type") == "directory":
                    raise UserError(
                        f"{self.scheme}://{key} is a folder (other objects are stored under {key}/), not a result "
                        "file: remove them"
                    )
                size = found[key].get("size")
                if size is not None and size > RECORD_LIMIT:
                    raise UserError(f"{self.scheme}://{key} is {size:,} bytes, larger than any result file: remove it")
            contents = self.fs.cat(keys) if keys else {}
        return {f"{self.scheme}://{key}": contents[key] for key in keys}

    def write_text(self, name: str, text: str) -> str:
        with self.errors(self.where(name)):
            self.fs.pipe_file(self.key(name), text.encode("utf-8"))
        return self.where(name)

    @contextlib.contextmanager
    def file(self, name: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="job-upload-") as folder:
            path = Path(folder) / Path(name).name
            yield path
            with self.errors(self.where(name)):
                self.fs.put_file(str(path), self.key(name))

    @contextlib.contextmanager
    def fetched(self, name: str) -> Iterator[Path | None]:
        with tempfile.TemporaryDirectory(prefix="job-download-") as folder:
            path = Path(folder) / Path(name).name
            with self.errors(self.where(name)):
                if not self.fs.isfile(self.key(name)):
                    path = None
                else:
                    self.fs.get_file(self.key(name), str(path))
            yield path

    def remove(self, name: str) -> None:
        with self.errors(self.where(name)), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.key(name))

    @contextlib.contextmanager
    def folder(self, name: str, whole: bool = False) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="job-upload-") as folder:
            yield Path(folder)
            with self.errors(self.where(name)):
                for file in sorted(Path(folder).rglob("*")):
                    if file.is_file():
                        self.fs.put_file(str(file), self.key(f"{name}/{file.relative_to(folder).as_posix()}"))

    @staticmethod
    @contextlib.contextmanager
    def errors(where: str) -> Iterator[None]:
        """Object-store failures as the job's errors, naming the URL: a missing bucket, denied access or
        missing credentials exit 2 (a retry fails the same way); anything else, such as an unreachable
        endpoint, exits 75."""
        try:
            yield
        except (UserError, RetryableError):
            raise
        except FileNotFoundError as exc:
            raise UserError(f"{where}: not found ({reason(exc)}); create the bucket or fix output_dir") from None
        except PermissionError as exc:
            raise UserError(
                f"{where}: access denied ({reason(exc)}); check the credentials and the bucket policy"
            ) from None
        except ImportError as exc:
            raise UserError(f"{where}: this install cannot reach object storage ({exc})") from None
        except Exception as exc:
            name = type(exc).__name__
            if name in ("NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"):
                raise UserError(f"{where}: no credentials found ({reason(exc)})") from None
            if name == "ParamValidationError":  # botocore refuses a request before sending it
                raise UserError(f"{where}: {reason(exc)}") from None
            if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # e.g. an invalid bucket name
                raise UserError(f"{where}: {reason(exc)}") from None
            raise RetryableError(f"{where}: object store unreachable or failing ({name}: {reason(exc)})") from None


@functools.cache
def quiet_libraries() -> None:
    """gcsfs and s3fs log each give-up with a traceback; ObjectOutput.errors says it in one line."""
    for library in ("gcsfs", "s3fs"):
        logging.getLogger(library).addHandler(logging.NullHandler())


def reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip().splitlines()[0]


def open_output(output_dir: str | Path) -> Output:
    """The output for a config's output_dir (already validated by output_dir_problem)."""
    value = str(output_dir)
    return ObjectOutput(value) if url_scheme(value) in OBJECT_STORE_SCHEMES else LocalOutput(Path(value))
