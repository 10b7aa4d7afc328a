"""`python -m job launch ARGS`: paddle.distributed.launch (one process per GPU) as a child, so that a
stop and a failed rank reach the job the way a queue expects.

- **Options.** ARGS are the launcher's options, then the job's command: `--gpus 0,1 run --config C`
  (`job/__main__.py run ...`, the older spelling, means the same). The options are read with the
  launcher's own parser before anything starts: one it does not know, or `--nproc_per_node 0`, exits 2
  (the launcher swallowed the first and took the next word as the script; the second trained nothing
  and exited 0).
- **The ranks run `python -m job`.** Each rank runs a two-line entry point written into the log folder,
  which runs the `job` package as `python -m job` does. Run as a script, `job/__main__.py` put `job/` first
  on `sys.path`, so its `config`, `data` and `results` shadowed any library's modules of those names.
- **Threads.** The job's own OMP_NUM_THREADS default (every core, set when `python -m job` starts) is
  not passed on: each rank takes its share of the cores (job.runtime.cpu), as under
  `python -m paddle.distributed.launch`. A value the user set is passed on.
- **Exit code.** Paddle's launcher stops the other ranks when one fails and exits with the first non-zero
  code in rank order: a rank's 2 (bad config, data, GPU node) or 75 came back as 143 or 247. Each rank
  leaves its code and error line in the log folder; the command returns the most telling one (2, then
  75, then any other) and logs each failed rank's line. A signal to the command is passed on, and it
  ends with 128 + the signal (143 for SIGTERM) once the ranks have stopped.
- **Logs.** The ranks' logs (workerlog.N, and the launcher's backup_env.N.json, a copy of the
  environment) go to `<output_dir>/launch-logs` of the job's config, in a folder only the job's user may
  read (an existing one is tightened; a link planted there is refused), unless --log_dir is given; never
  under the current folder (an object-store output_dir needs --log_dir outside the images). The launcher
  runs under umask 077: its files are 600 whatever the umask.
- **The device first.** On a GPU build, the GPUs are counted (as the launcher does first) before the
  launcher starts: a driver too old for the image's CUDA exits 2 with its fix, not the launcher's traceback.
  `--devices` (`--gpus`) is checked against the devices the launcher will see, and `--rank` against
  `--nnodes`, which the launcher does not check (it waits for nodes that never come).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

from job.errors import UserError
from job.exit_codes import PERMANENT_IO_ERRORS, most_telling
from job.output.layout import PRIVATE_UMASK, below, private_folder

LOG_FOLDER = "launch-logs"
STATUS_VARIABLE = "JOB_RANK_STATUS_DIR"  # where each rank leaves its exit code and error line
ENTRY_NAME = "job_rank_entry.py"
JOB_SCRIPT = Path(__file__).resolve().parent / "__main__.py"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
# A log folder that cannot be made for these reasons never will be: exit 2, not 75 (besides the permanent
# I/O errors: a parent that cannot be made, as under /proc, or a file where a folder must go).
PERMANENT_MKDIR = (*PERMANENT_IO_ERRORS, errno.ENOENT, errno.ENOTDIR, errno.EEXIST)
# The job's commands a rank may run; a first word that is one of these starts the job's own arguments.
RANK_COMMANDS = ("run",)
LAUNCHER_FILES = ("backup_env.", "workerlog.", "endpoints.", "default.")  # what paddle.distributed.launch writes


@dataclass(frozen=True)
class LaunchPlan:
    """The launcher's options as given, and what each rank runs: the job's own arguments (`run ...`),
    or another script and its arguments."""

    options: list[str]
    job_args: list[str] | None  # None: `script` is the user's own
    script: str | None = None
    script_args: tuple[str, ...] = ()
    log_dir_given: bool = False
    devices: str | None = None  # --devices / --gpus, as the launcher read it


def parse_launch(args: list[str]) -> LaunchPlan:
    """ARGS read with paddle.distributed.launch's own parser (context/args_envs.py); UserError for an
    option it does not know, a missing command, or a process count below 1."""
    from paddle.distributed.launch.context.args_envs import parse_args

    saved = sys.argv
    sys.argv = ["launch", *args]
    try:
        with redirect_stderr(StringIO()) as errors:
            parsed, unknown = parse_args()
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        raise UserError(f"job launch: {lines[-1] if lines else 'the launcher options do not parse'}") from None
    finally:
        sys.argv = saved
    if unknown:
        raise UserError(f"job launch: {unknown[0]!r} is not an option of paddle.distributed.launch "
                        "(`python -m paddle.distributed.launch --help` lists them)")  # fmt: skip
    if parsed.nproc_per_node is not None and parsed.nproc_per_node < 1:
        raise UserError(f"job launch: --nproc_per_node {parsed.nproc_per_node} starts no process; give 1 or more")
    check_node_rank(parsed.rank, parsed.nnodes)
    script, rest = parsed.training_script, list(parsed.training_script_args)
    options = args[: len(args) - len(rest) - 1]
    log_dir_given = any(arg == "--log_dir" or arg.startswith("--log_dir=") for arg in options)
    devices = parsed.devices or None
    if script in RANK_COMMANDS:
        return LaunchPlan(options, [script, *rest], log_dir_given=log_dir_given, devices=devices)
    if Path(script).name == "__main__.py" and Path(script).parent.name == "job":
        if not rest:
            raise UserError(f"job launch: {script} needs the job's command after it, e.g. `run --config C`")
        return LaunchPlan(options, rest, log_dir_given=log_dir_given, devices=devices)
    if not log_dir_given:  # whose output_dir the script writes to is unknown: never the current folder
        raise UserError(f"job launch: {script} is not the job's own command; give --log_dir for the ranks' logs")
    return LaunchPlan(options, None, script, tuple(rest), log_dir_given, devices)


def check_node_rank(rank: int | None, nnodes: str | None) -> None:
    """`--rank 5 --nnodes 2` waits for ever for nodes that never come: the launcher does not check it."""
    most = str(nnodes or "1").rpartition(":")[2]  # "2", or "2:4" (elastic: at most 4)
    if rank is not None and rank >= 0 and most.isdigit() and rank >= int(most):
        raise UserError(f"job launch: --rank {rank} is not a node of --nnodes {nnodes or 1} (ranks run from 0 to "
                        f"{int(most) - 1})")  # fmt: skip


def default_log_dir(output_dir: str | None) -> Path | None:
    """<output_dir>/launch-logs of the job's config; for an object-store output_dir (no local folder),
    the reports folder JOB_REPORTS_DIR (the mounted /app/reports in the images); None outside the images,
    where --log_dir must say (never the current folder). A link planted at launch-logs is refused."""
    if output_dir and "://" not in output_dir:
        return below(Path(output_dir), LOG_FOLDER)
    reports = os.environ.get("JOB_REPORTS_DIR")
    return below(Path(reports), LOG_FOLDER) if reports else None


def entry_point(folder: Path) -> Path:
    """A rank's entry point: the `job` package run as `python -m job` runs it, with the folder that
    holds the package (not job/ itself) first on sys.path."""
    path = folder / ENTRY_NAME
    path.write_text(
        "import runpy, sys\n"
        f"sys.path[0] = {str(PACKAGE_ROOT)!r}\n"
        "runpy.run_module('job', run_name='__main__', alter_sys=True)\n",
        encoding="utf-8",
    )
    return path


def _given_log_dir(plan: LaunchPlan) -> str | None:
    for index, arg in enumerate(plan.options):
        if arg.startswith("--log_dir="):
            return arg.partition("=")[2]
        if arg == "--log_dir" and index + 1 < len(plan.options):
            return plan.options[index + 1]
    return None


def prepare_log_dir(plan: LaunchPlan, default: Path | None) -> Path:
    """The ranks' log folder, ready: the job's own (launch-logs) made or tightened to 700; a given
    --log_dir made 700 when missing and otherwise left as the user keeps it. The launcher's files already
    in it become 600 (an older launch's environment copies were 644); the launcher itself runs under
    umask 077, so its new ones are 600 too."""
    given = _given_log_dir(plan)
    if given is not None and not given.strip():
        raise UserError("job launch: --log_dir names no folder; give one, or leave it out for <output_dir>/launch-logs")
    if given is None and default is None:
        raise UserError("job launch: output_dir is an object-store prefix, so the ranks' logs (which hold a copy "
                        "of the environment) have no local home: give --log_dir FOLDER")  # fmt: skip
    folder = Path(given) if given is not None else default
    assert folder is not None
    try:
        if given is None or not folder.exists():
            private_folder(folder)
        for path in folder.iterdir():
            if path.name.startswith(LAUNCHER_FILES) and path.is_file() and not path.is_symlink():
                os.chmod(path, 0o600)
    except OSError as exc:
        if exc.errno in PERMANENT_MKDIR:
            raise UserError(f"job launch: cannot create the log folder {folder}: {exc.strerror}") from None
        raise
    return folder


def launcher_command(plan: LaunchPlan, log_dir: Path, entry: Path | None) -> list[str]:
    log = [] if plan.log_dir_given else ["--log_dir", str(log_dir)]
    rank = [str(entry), *(plan.job_args or [])] if plan.job_args is not None else [plan.script, *plan.script_args]
    return [sys.executable, "-m", "paddle.distributed.launch", *log, *plan.options, *rank]  # type: ignore[list-item]


def rank_environment(status: Path, chosen: set[str]) -> dict[str, str]:
    """The launcher's environment: without the defaults `python -m job` chose for itself (each rank
    chooses its own share), with the folder the ranks report their exit codes into."""
    env = {key: value for key, value in os.environ.items() if key not in chosen}
    env[STATUS_VARIABLE] = str(status)
    return env


def record_rank_exit(code: int, message: str) -> None:
    """In a rank of `job launch`: leave this rank's exit code and error line for the command to read."""
    folder = os.environ.get(STATUS_VARIABLE)
    rank = os.environ.get("PADDLE_TRAINER_ID", "")
    if not folder or not rank.isdigit():
        return
    with contextlib.suppress(OSError):  # the launcher's own code still reaches the queue
        Path(folder, f"rank{rank}.json").write_text(json.dumps({"code": code, "error": message[:500]}), "utf-8")


def rank_exits(status: Path) -> dict[int, tuple[int, str]]:
    found = {}
    for path in sorted(status.glob("rank*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            found[int(path.stem.removeprefix("rank"))] = (int(record["code"]), str(record["error"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def check_devices(devices: str | None = None) -> None:
    """On a GPU build, count the GPUs as the launcher does first (context/device.py): a fault there (a
    driver too old: CUDA error 35) exits 2 with its fix instead of the launcher's traceback. Then the
    `--devices` (`--gpus`) asked for, against the devices the launcher will see: one it does not see
    ended in its ValueError traceback ('substring not found' on CPU, where it sees none)."""
    import paddle

    from job.runtime.device_faults import as_job_error

    if paddle.is_compiled_with_cuda():
        try:
            paddle.device.cuda.device_count()
        except (OSError, RuntimeError) as exc:
            error = as_job_error(exc)
            if error is None:
                raise
            raise error from None
    if not devices:
        return
    from paddle.distributed.launch.context.device import Device, DeviceType

    found = Device.parse_device()
    labels = found.labels if isinstance(found.labels, list) else str(found.labels).split(",")
    visible = [label for label in labels if label] if found.dtype != DeviceType.CPU else []
    if not visible:
        raise UserError(f"job launch: --devices {devices}: this node has no GPU the launcher can use; for CPU "
                        "ranks leave --devices (--gpus) out and give --nproc_per_node N")  # fmt: skip
    missing = [name.strip() for name in devices.split(",") if name.strip() not in visible]
    if missing:
        raise UserError(f"job launch: --devices {devices}: {missing[0]!r} is not one of the visible GPUs "
                        f"({','.join(visible)}; CUDA_VISIBLE_DEVICES renumbers them from 0)")  # fmt: skip


def launch(plan: LaunchPlan, log_dir: Path | None, chosen: set[str]) -> int:
    """Run the launcher, pass SIGTERM/SIGINT on to it, and return the exit code for the queue."""
    check_devices(plan.devices)
    log_dir = prepare_log_dir(plan, log_dir)  # backup_env.N.json holds the environment
    received: list[int] = []
    with tempfile.TemporaryDirectory(prefix="job-launch-") as scratch:
        status = Path(scratch)
        entry = entry_point(status) if plan.job_args is not None else None
        child = subprocess.Popen(launcher_command(plan, log_dir, entry), env=rank_environment(status, chosen),
                                 umask=PRIVATE_UMASK)  # fmt: skip

        def forward(signum: int, frame: object) -> None:
            received.append(signum)
            child.send_signal(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, forward)
        code = child.wait()
        exits = rank_exits(status)
    for rank, (rank_code, error) in sorted(exits.items()):
        if rank_code != 0:
            print(f"rank {rank} exited {rank_code}: {error}", file=sys.stderr, flush=True)
    if received:
        return 128 + received[0]
    launcher_code = code if code >= 0 else 128 - code
    if launcher_code == 0:
        return 0
    return most_telling(code for code, _ in exits.values()) or launcher_code  # no rank left a code: the launcher's
