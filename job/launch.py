"""`python -m job launch ARGS`: paddle.distributed.launch (one process per GPU) as a child, so that a
stop reaches the job the way a queue expects.

Run as PID 1 of a container, the launcher itself exits 15 after `docker stop` or a preemption's SIGTERM
(the ranks stop cleanly, but the code says "failed"), and its default log folder ./log lands wherever the
container started, a tmpfs in the hardened images. Here the launcher's ranks get SIGTERM/SIGINT passed
on, the command ends with 128 + the signal (143 for SIGTERM) once they have stopped, and the ranks' logs
(workerlog.N) go to reports/launch-logs unless --log_dir says otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

LOG_FOLDER = "launch-logs"


def default_log_dir() -> Path:
    """Under the reports folder (JOB_REPORTS_DIR, the mounted /app/reports in the images)."""
    return Path(os.environ.get("JOB_REPORTS_DIR", "reports")) / LOG_FOLDER


def launcher_command(args: list[str]) -> list[str]:
    """The launcher's command line, with --log_dir added when `args` has none."""
    given = any(arg == "--log_dir" or arg.startswith("--log_dir=") for arg in args)
    log_dir = [] if given else ["--log_dir", str(default_log_dir())]
    return [sys.executable, "-m", "paddle.distributed.launch", *log_dir, *args]


def launch(args: list[str]) -> int:
    """Run the launcher, pass SIGTERM/SIGINT on to it, and return the exit code for the queue."""
    received: list[int] = []
    child = subprocess.Popen(launcher_command(args))

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    if received:
        return 128 + received[0]
    return code if code >= 0 else 128 - code
