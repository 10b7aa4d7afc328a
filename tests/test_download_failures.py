"""A network failure at any first-run download exits 75, so a queue retries it: the TNEWS archive, a
model's config, its weights and its tokenizer, each against a mirror (PPNLP_ENDPOINT) that closes the
connection without an answer or a port where nothing listens."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from tests.fixtures import original_paddlenlp_urls, write_vocab

BUILT_IN = "ernie-3.0-nano-zh"  # a built-in name: PaddleNLP downloads its weights and vocab


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves the files in `server.files` by name; any other request gets its connection closed unanswered."""

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        self.server.requested.append(self.path)  # type: ignore[attr-defined]
        body = self.server.files.get(name)  # type: ignore[attr-defined]
        if body is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET  # PaddleNLP asks whether a file exists before it downloads it

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def failing_mirror(tmp_path: Path) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    server.files = {}  # type: ignore[attr-defined]
    server.requested = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def refused_endpoint() -> str:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def paddlenlp_urls() -> Iterator[None]:
    with original_paddlenlp_urls():
        yield


def community_store_at(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """PaddleNLP builds its community-model URLs from PPNLP_ENDPOINT once, at import (bos_download.py):
    set them as a process started with PPNLP_ENDPOINT=`endpoint` has them."""
    import importlib

    bos_download = importlib.import_module("paddlenlp.utils.download.bos_download")  # the module, not its function
    original = bos_download.ENDPOINT
    for name in ("BOS_URL_TEMPLATE", "BOS_URL_TEMPLATE_WITHOUT_REVISION"):
        monkeypatch.setattr(bos_download, name, endpoint + getattr(bos_download, name)[len(original) :])
    monkeypatch.setattr(bos_download, "ENDPOINT", endpoint)


def run_against(endpoint: str, config: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.setenv("PPNLP_ENDPOINT", endpoint)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    return result.exit_code, result.output


# What fails, the config that makes the job fetch it, what the job then says, and the path requested.
DOWNLOADS = {
    "tnews": ({"data_dir": None}, "could not download {endpoint}/datasets/tnews_public.zip",
              "/datasets/tnews_public.zip"),
    "vocab": ({"model_name": BUILT_IN}, f"model '{BUILT_IN}': could not download {{endpoint}}/models/"
              "transformers/ernie_3.0/ernie_3.0_nano_zh_vocab.txt", "_vocab.txt"),
    "model config": ({"model_name": "ernie-community-x"}, "could not get the config of model 'ernie-community-x'",
                     "/models/community/ernie-community-x/config.json"),  # a name PaddleNLP does not build in
}  # fmt: skip


@pytest.mark.parametrize("failure", ["closed", "refused"])
@pytest.mark.parametrize("download", list(DOWNLOADS))
def test_a_failed_download_exits_75(download, failure, failing_mirror, write_config, monkeypatch) -> None:
    overrides, message, requested = DOWNLOADS[download]
    endpoint = refused_endpoint() if failure == "refused" else f"http://127.0.0.1:{failing_mirror.server_port}"
    community_store_at(endpoint, monkeypatch)
    code, output = run_against(endpoint, write_config(**overrides), monkeypatch)
    assert code == 75, output
    assert message.format(endpoint=endpoint) in output
    assert failure == "refused" or any(path.endswith(requested) for path in failing_mirror.requested)


def test_a_failed_weights_download_exits_75(failing_mirror, write_config, monkeypatch, tmp_path: Path) -> None:
    vocab = write_vocab(tmp_path / "vocab.txt").read_bytes()
    failing_mirror.files["ernie_3.0_nano_zh_vocab.txt"] = vocab  # the tokenizer arrives, the weights do not
    code, output = run_against(f"http://127.0.0.1:{failing_mirror.server_port}", write_config(model_name=BUILT_IN),
                               monkeypatch)  # fmt: skip
    assert code == 75, output
    assert f"model '{BUILT_IN}': could not download http://127.0.0.1:{failing_mirror.server_port}/models/" in output
    assert any(path.endswith("ernie_3.0_nano_zh.pdparams") for path in failing_mirror.requested)


def test_a_community_model_whose_tokenizer_cannot_be_fetched_exits_75(
    failing_mirror, write_config, monkeypatch, tiny_model: Path
) -> None:
    """The config arrives and every tokenizer file fails: PaddleNLP then fails an assertion of its own,
    which must still be a retryable download failure, not a crash."""
    failing_mirror.files["config.json"] = (tiny_model / "config.json").read_bytes()
    endpoint = f"http://127.0.0.1:{failing_mirror.server_port}"
    community_store_at(endpoint, monkeypatch)
    code, output = run_against(endpoint, write_config(model_name="ernie-community-x"), monkeypatch)
    assert code == 75, output
    assert "could not load the tokenizer of 'ernie-community-x'" in output


class Trickle(http.server.BaseHTTPRequestHandler):
    """Promises a megabyte and sends it a byte at a time, slower than any useful mirror."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        try:
            for _ in range(1 << 20):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the job hung up
            pass

    def log_message(self, *args) -> None:
        pass


TRICKLED = {  # what the job fetches first, and the config that makes it fetch that
    "tnews": ({"data_dir": None}, "could not download {endpoint}/datasets/tnews_public.zip"),
    "model": ({"model_name": BUILT_IN}, f"model '{BUILT_IN}': could not download {{endpoint}}/models/transformers/"),
}


@pytest.mark.timeout(60)  # the check ends it in about a second; without the check it would run for hours
@pytest.mark.parametrize("fetched", list(TRICKLED))
def test_a_mirror_that_trickles_bytes_exits_75_at_the_minimum_rate(fetched, write_config, monkeypatch) -> None:
    """A byte every 50 ms never trips the read timeout; the rate check ends it (here after 1 s, at
    1 KiB/s; the job's own are 60 s and 32 KiB/s), for a dataset and for a built-in model's files."""
    import job.data.download as download

    monkeypatch.setattr(download, "RATE_GRACE_SECONDS", 1.0)
    monkeypatch.setattr(download, "MIN_RATE", 1024)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        started = time.monotonic()
        overrides, message = TRICKLED[fetched]
        code, output = run_against(endpoint, write_config(**overrides), monkeypatch)
        assert code == 75, output
        assert message.format(endpoint=endpoint) in output
        assert "below the minimum rate of 1 KiB/s; the mirror is too slow" in output
        assert time.monotonic() - started < 20  # the grace period and a margin, not the read timeout
    finally:
        server.shutdown()
        server.server_close()


def test_an_archive_member_larger_than_any_clue_file_is_refused_before_it_is_written(
    write_config, monkeypatch, tmp_path: Path
) -> None:
    import zipfile

    import job.data.download as download
    from tests.fixtures import serve

    monkeypatch.setattr(download, "MEMBER_LIMIT", 1 << 20)  # the job's own is 1 GiB
    store = tmp_path / "store" / "datasets"
    store.mkdir(parents=True)
    with zipfile.ZipFile(store / "tnews_public.zip", "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("tnews_public/train.json", b"\0" * (2 << 20))  # 2 MiB of zeros: a few KB zipped
    server = serve(tmp_path / "store")
    endpoint, _ = next(server)
    try:
        code, output = run_against(endpoint, write_config(data_dir=None), monkeypatch)
    finally:
        server.close()
    assert code == 75, output
    assert "tnews_public/train.json would inflate to 2,097,152 bytes, more than any CLUE file" in output
    import paddlenlp.utils.env

    cache = Path(paddlenlp.utils.env.DATA_HOME) / "Clue" / "tnews_public"
    assert not (cache / "train.json").exists()


@pytest.mark.parametrize("variable", ["JOB_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_a_download_where_the_environment_says_offline_exits_2_with_no_request(
    variable: str, failing_mirror, write_config, monkeypatch
) -> None:
    """An air-gapped cluster's retry can never fetch the file: exit 2 (a queue does not retry it), where a
    failed connection alone stays 75."""
    monkeypatch.setenv(variable, "1")
    endpoint = f"http://127.0.0.1:{failing_mirror.server_port}"
    code, output = run_against(endpoint, write_config(model_name=BUILT_IN), monkeypatch)
    assert code == 2, output
    assert f"is not in the cache and {variable}=1 says there is no network; run `python -m job prefetch" in output
    assert failing_mirror.requested == []
