"""First-run downloads, made safe for array jobs sharing one cache ($PPNLP_HOME).

- Mirrors. PaddleNLP reads PPNLP_ENDPOINT only for community models; the built-in models (ERNIE 3.0
  weights and vocab) and the CLUE datasets have fixed https://bj.bcebos.com/paddlenlp/... URLs.
  `use_mirror` rewrites those URLs, in PaddleNLP's own tables, to PPNLP_ENDPOINT when it is set, so one
  variable moves every download to a mirror (or a test server).
- Built-in models (ERNIE 3.0 weights and vocab): PaddleNLP would store whatever a 200 response holds
  (a captive portal's page became the vocab, and every later run failed on it without a request), and
  its transfer has no overall deadline. So the job fetches each file itself, as it fetches datasets:
  under a file lock, to a temporary file with the minimum rate below, checked (the weights load, the
  vocab has BERT's special tokens) before it is renamed to the path PaddleNLP looks in. A cached file
  that fails the check is removed and fetched again.
- CLUE datasets (TNEWS and the others): Paddle's dataset download has no lock between processes (two
  tasks would write the same temporary file), so the job fetches the archive itself: under a file
  lock, to a temporary file, then extracts the files PaddleNLP lists and checks each against
  PaddleNLP's md5 before renaming it into place. PaddleNLP then finds them and downloads nothing.
- `prefetch` does all of that for a config and loads what it fetched, so a queue can warm a shared
  cache once before an array starts."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job.errors import RetryableError, UserError

PADDLENLP_STORE = "https://bj.bcebos.com/paddlenlp"  # the prefix of every built-in download URL
TIMEOUT_SECONDS = 60  # per connect and per read; a stalled mirror fails (75) instead of hanging
# A mirror that trickles bytes never trips the read timeout: after RATE_GRACE_SECONDS, a download whose
# average rate is below MIN_RATE stops (75). A file of N bytes so has a deadline of about N / MIN_RATE.
RATE_GRACE_SECONDS = 60
MIN_RATE = 32 * 1024  # bytes per second
MEMBER_LIMIT = 1 << 30  # CLUE's files are tens of MB; a member declared larger is refused before it is written


def mirror() -> str | None:
    value = os.environ.get("PPNLP_ENDPOINT", "").rstrip("/")
    return value if value and value != PADDLENLP_STORE else None


def mirrored(url: str) -> str:
    base = mirror()
    return base + url[len(PADDLENLP_STORE) :] if base and url.startswith(PADDLENLP_STORE + "/") else url


def use_mirror() -> None:
    """Point PaddleNLP's built-in model and tokenizer URLs at PPNLP_ENDPOINT (no-op when unset)."""
    if mirror() is None:
        return
    from paddlenlp.transformers import ErnieModel, ErnieTokenizer

    for table in (ErnieModel.pretrained_resource_files_map, ErnieTokenizer.pretrained_resource_files_map):
        for urls in table.values():
            for name, url in urls.items():
                urls[name] = mirrored(url)


# ---------------------------------------------------------------- built-in models


@dataclass(frozen=True)
class ModelFile:
    url: str
    path: Path  # where PaddleNLP looks for it ($PPNLP_HOME/models/<name>/...)
    check: Callable[[Path], str | None]  # what is wrong with a copy of it, or None


def builtin_model_files(model_name: str) -> list[ModelFile]:
    """The files PaddleNLP downloads for one of its built-in ERNIE models (none for a folder or another
    name: those PaddleNLP resolves itself), with the URLs use_mirror has set."""
    from paddlenlp.transformers import ErnieModel, ErnieTokenizer

    folder = model_cache_folder(model_name)
    files = []
    vocab = ErnieTokenizer.pretrained_resource_files_map["vocab_file"].get(model_name)
    if vocab:
        files.append(ModelFile(mirrored(vocab), folder / vocab.rsplit("/", 1)[-1], vocab_problem))
    weights = ErnieModel.pretrained_resource_files_map["model_state"].get(model_name)
    if weights:
        files.append(
            ModelFile(mirrored(weights), folder / ErnieModel.resource_files_names["model_state"], weights_problem)
        )
    return files


def model_cache_folder(model_name: str) -> Path:
    """Where PaddleNLP keeps a model it downloaded by name."""
    from paddlenlp.utils.env import MODEL_HOME

    return Path(MODEL_HOME) / model_name


def fetch_model(model_name: str) -> None:
    """Point downloads at PPNLP_ENDPOINT (use_mirror), then make sure each file of a built-in model is
    in the cache and intact; PaddleNLP then finds them and downloads nothing."""
    from filelock import FileLock

    use_mirror()
    files = builtin_model_files(model_name)
    if all(file.path.is_file() and not looks_like_a_page(file.path) for file in files):
        return  # the common case: a page is refused here; other damage surfaces on load (load_model)
    folder = model_cache_folder(model_name)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".download.lock")):
        for file in files:
            if file.path.is_file() and file.check(file.path) is None:
                continue  # another task fetched it while this one waited, or it was never bad
            file.path.unlink(missing_ok=True)
            with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
                fetched = Path(scratch) / file.path.name
                try:
                    download(file.url, fetched)
                except RetryableError as exc:
                    raise RetryableError(f"model '{model_name}': {exc}") from None
                problem = file.check(fetched)
                if problem is not None:
                    raise RetryableError(
                        f"model '{model_name}': {file.url} is {problem}; nothing was cached, a retry downloads "
                        "it again (a captive portal, or a mirror or proxy serving a page instead of the file?)"
                    )
                os.replace(fetched, file.path)


def looks_like_a_page(path: Path) -> bool:
    """An HTML or XML page (a captive portal's, a mirror's error page) where a model file should be."""
    with path.open("rb") as handle:
        head = handle.read(1024).lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml")) or b"<html" in head


def _opening(path: Path) -> str:
    with path.open("rb") as handle:
        return repr(handle.read(60).decode("utf-8", "replace"))


def vocab_problem(path: Path) -> str | None:
    """A WordPiece vocab is UTF-8 text, one token per line, with the special tokens ERNIE uses."""
    try:
        tokens = set(path.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError:
        return f"not UTF-8 text (it starts {_opening(path)})"
    missing = [token for token in ("[PAD]", "[CLS]", "[SEP]", "[UNK]") if token not in tokens]
    return f"not a vocabulary: no {', '.join(missing)} line (it starts {_opening(path)})" if missing else None


def weights_problem(path: Path) -> str | None:
    """Paddle weights load as a name -> tensor mapping, safetensors have a header naming tensors
    (PaddleNLP publishes no md5 for its ERNIE files)."""
    import paddle
    from safetensors import safe_open

    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), "np") as weights:  # reads the header: names, shapes and offsets
                state = dict.fromkeys(weights.keys())
        else:
            state = paddle.load(str(path), return_numpy=True)
    except Exception as exc:  # pickle and Paddle raise many kinds for a file that is not weights
        return f"not Paddle weights ({type(exc).__name__}: {str(exc).strip()[:120]}; it starts {_opening(path)})"
    if not isinstance(state, dict) or not state:
        return f"not Paddle weights (it loads as {type(state).__name__}, not a name -> tensor mapping)"
    return None


# ---------------------------------------------------------------- CLUE datasets


@dataclass(frozen=True)
class Archive:
    url: str
    folder: Path  # where PaddleNLP looks for the extracted files
    members: dict[str, str]  # file inside the archive -> md5 (the files the job reads)


def clue_archive(task: str) -> Archive:
    """A CLUE task as PaddleNLP describes it (URL, cache folder, md5 of train, dev and labels.json where
    the task has one). The public test split has no labels and is not extracted."""
    from paddlenlp.datasets.clue import Clue
    from paddlenlp.utils.env import DATA_HOME

    spec = Clue.BUILDER_CONFIGS[task]
    members = {
        spec["splits"][part][0].replace(os.sep, "/"): spec["splits"][part][1]
        for part in ("train", "dev", "labels")
        if part in spec["splits"]
    }
    return Archive(url=mirrored(spec["url"]), folder=Path(DATA_HOME) / Clue.__name__, members=members)


def md5_of(path: Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def missing_members(archive: Archive) -> list[str]:
    return [
        member for member, md5 in archive.members.items()
        if not (archive.folder / member).is_file() or md5_of(archive.folder / member) != md5
    ]  # fmt: skip


def fetch_archive(archive: Archive) -> None:
    """Download and extract `archive` unless its files are already there and intact. Under a file
    lock: the first of several tasks downloads, the others wait and find the files."""
    from filelock import FileLock

    if not missing_members(archive):
        return
    archive.folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(archive.folder / ".download.lock")):
        if not missing_members(archive):  # another task finished it while this one waited
            return
        with tempfile.TemporaryDirectory(dir=archive.folder, prefix=".download-") as scratch:
            zip_path = Path(scratch) / "archive.zip"
            download(archive.url, zip_path)
            extract_checked(zip_path, archive, Path(scratch))


def extract_checked(zip_path: Path, archive: Archive, scratch: Path) -> None:
    """Extract the listed members, check each md5, then rename each into place."""
    try:
        with zipfile.ZipFile(zip_path) as bundle:
            for member, md5 in archive.members.items():
                size = bundle.getinfo(member).file_size  # zipfile stops a member at its declared size
                if size > MEMBER_LIMIT:
                    raise RetryableError(
                        f"{archive.url}: {member} would inflate to {size:,} bytes, more than any CLUE file "
                        f"({MEMBER_LIMIT:,}); the mirror serves another archive"
                    )
                try:
                    extracted = Path(bundle.extract(member, scratch / "unpacked"))
                except OSError as exc:
                    raise RetryableError(
                        f"could not extract {member} ({size:,} bytes) from {archive.url} into {scratch}: {exc.strerror}"
                    ) from None
                if md5_of(extracted) != md5:
                    raise RetryableError(
                        f"{archive.url}: {member} has md5 {md5_of(extracted)}, PaddleNLP expects {md5}; "
                        "the download is corrupt or the mirror serves other files"
                    )
    except (zipfile.BadZipFile, KeyError) as exc:
        raise RetryableError(f"{archive.url} is not the expected archive: {exc}") from None
    for member in archive.members:
        target = archive.folder / member
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / "unpacked" / member, target)


# What a download failure tells a user with no network (or behind a firewall) to do instead.
OFFLINE = (
    "without network: run `python -m job prefetch --config C` on a connected machine and copy its $PPNLP_HOME "
    "here, or set model_name to a local model folder and data_dir to a local copy of the data "
    "(docs/troubleshooting.md#downloads-and-running-offline); `python -m job demo` runs with no network at all"
)


OFFLINE_VARIABLES = ("JOB_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the job's, and the field's habit


def declared_offline() -> str | None:
    """The variable that says this machine has no network (set to 1, true or yes), or None."""
    return next((name for name in OFFLINE_VARIABLES if os.environ.get(name, "").lower() in ("1", "true", "yes")), None)


def download(url: str, path: Path) -> None:
    """Stream `url` to `path` with a progress bar; a short or failed transfer is RetryableError (75): a
    connection that fails may work on a retry. Where the environment says there is no network
    (JOB_OFFLINE=1, or transformers' HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), no retry can fetch it: exit 2
    at once, with no request, so a queue does not retry a permanent failure."""
    offline = declared_offline()
    if offline:
        raise UserError(f"{url} is not in the cache and {offline}={os.environ[offline]} says there is no network; "
                        f"{OFFLINE.removeprefix('without network: ')}")  # fmt: skip
    import requests
    import urllib3
    from tqdm import tqdm

    try:
        with requests.get(url, stream=True, timeout=TIMEOUT_SECONDS) as response:
            if response.status_code == 404 and mirror():  # a wrong mirror stays wrong on a retry
                raise UserError(f"{url}: not found (404); check PPNLP_ENDPOINT={mirror()}")
            response.raise_for_status()
            expected = int(response.headers.get("Content-Length") or 0)
            written = 0
            start = time.monotonic()
            with open(path, "wb") as stream, tqdm(
                total=expected or None, unit="B", unit_scale=True, desc=f"downloading {url.rsplit('/', 1)[-1]}",
                file=sys.stderr, disable=None,
            ) as bar:  # fmt: skip
                # read1 returns as soon as any bytes arrive (iter_content waits for a whole block, which a
                # mirror sending a byte every few seconds never completes), so the rate is judged on time
                while block := response.raw.read1(1 << 20, decode_content=True):
                    stream.write(block)
                    written += len(block)
                    bar.update(len(block))
                    elapsed = time.monotonic() - start
                    if elapsed > RATE_GRACE_SECONDS and written / elapsed < MIN_RATE:
                        raise RetryableError(
                            f"could not download {url}: {written:,} bytes in {elapsed:.0f} s, below the minimum "
                            f"rate of {MIN_RATE // 1024} KiB/s; the mirror is too slow"
                        )
    except (requests.ConnectionError, requests.Timeout) as exc:  # no network, no DNS, a firewall
        reason = str(exc).split(": ")[-1][:160] or type(exc).__name__
        raise RetryableError(f"could not download {url} ({type(exc).__name__}: {reason}); {OFFLINE}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:  # raw reads raise urllib3's own
        raise RetryableError(f"could not download {url}: {exc}") from None
    if expected and written != expected:
        raise RetryableError(f"could not download {url}: {written} of {expected} bytes arrived")
