"""Tiny, offline stand-ins for the real model and data, shared by pytest and the container smoke test.

`python -m tests.fixtures OUT` writes OUT/model (a 2-layer ERNIE + tokenizer) and OUT/data
(CLUE-format train.json/dev.json whose labels are learnable from keyword characters).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import os
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from job.demo import (  # noqa: F401 - the builders the tests and the smoke test use
    FILLER,
    KEYWORDS,
    SPECIAL_TOKENS,
    TINY_ERNIE,
    build_tiny_encoder,
    build_tiny_model,
    build_tnews_folder,
    keywords_for,
    make_sentence,
    tnews_records,
    write_jsonl,
    write_vocab,
)

ROOT = Path(__file__).resolve().parents[1]


def run_tiny(folder: Path, tiny_model: Path, tnews_dir: Path, **overrides: Any) -> Path:
    """`job run` on the tiny model and data into folder/out (a fast config; keywords override keys)."""
    import yaml
    from click.testing import CliRunner

    from job.cli import main

    values = {
        "model_name": str(tiny_model), "data_dir": str(tnews_dir), "max_seq_length": 32, "batch_size": 16,
        "device": "cpu", "lora_r": 4, "lora_alpha": 8, "output_dir": str(folder / "out"), **overrides,
    }  # fmt: skip
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return folder / "out"


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.gets[self.path.lstrip("/")] += 1  # type: ignore[attr-defined]
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def original_paddlenlp_urls() -> Iterator[None]:
    """The job's use_mirror rewrites PaddleNLP's URL tables in place (every ERNIE class shares them) when
    PPNLP_ENDPOINT is set: an in-process test that sets it leaves the tables as it found them."""
    from paddlenlp.transformers import ErnieModel, ErnieTokenizer

    tables = [ErnieModel.pretrained_resource_files_map, ErnieTokenizer.pretrained_resource_files_map]
    saved = [copy.deepcopy(table) for table in tables]
    try:
        yield
    finally:
        for table, original in zip(tables, saved, strict=True):
            table.clear()
            table.update(original)


def serve(folder: Path) -> Iterator[tuple[str, Counter]]:
    """An HTTP server on 127.0.0.1 serving `folder` (a stand-in for PaddleNLP's store, PPNLP_ENDPOINT);
    yields its URL and the GET count of each path, and stops when the generator is closed."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(CountingHandler, directory=str(folder))
    )
    server.gets = Counter()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.gets  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# `python -m job` in a child that stops at the first stderr write holding the marker until the parent's
# signal has been sent (the parent then creates the go file): the child can never finish first.
HOLD_AT_MARKER = """
import pathlib, runpy, sys, time
marker, go = sys.argv[1], pathlib.Path(sys.argv[2])
class Hold:
    def __init__(self, stream):
        self.stream, self.seen, self.held = stream, "", False
    def write(self, text):
        written = self.stream.write(text)
        if not self.held:
            self.seen = (self.seen + text)[-4096:]
            # print() writes its text and its newline apart: hold once the marker's line is complete
            if marker in self.seen and "\\n" in self.seen[self.seen.index(marker):]:
                self.held = True
                self.stream.flush()
                deadline = time.monotonic() + 600  # a parent that died never sends it
                while not go.exists() and time.monotonic() < deadline:  # the handler runs during this wait
                    time.sleep(0.005)
        return written
    def __getattr__(self, name):
        return getattr(self.stream, name)
sys.stderr = Hold(sys.stderr)
sys.argv = ["job", *sys.argv[3:]]
runpy.run_module("job", run_name="__main__", alter_sys=True)
"""


def run_and_signal_on(
    config: Path, marker: str, signum: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`job run` in a child; send `signum` when a log line holds `marker`, while the child waits right
    after writing that line (so the signal always lands at that point, however loaded the machine).
    Returns the finished process and its whole log. stderr is read as it comes, so the pipe never
    fills. `env` adds variables."""
    go = Path(tempfile.mkdtemp(prefix="signal-")) / "sent"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_AT_MARKER, marker, str(go), "run", "--config", str(config)], cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if marker in line:
            process.send_signal(signum)
            go.touch()
            break
    log = "".join(seen) + process.communicate(timeout=300)[1]
    go.unlink(missing_ok=True)
    go.parent.rmdir()
    return process, log


if __name__ == "__main__":
    out = Path(sys.argv[1])
    build_tiny_model(out / "model")
    build_tnews_folder(out / "data")
    print(out)
