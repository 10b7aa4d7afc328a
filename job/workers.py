"""`job run --workers N` (config key `workers`): the plan's pending runs trained side by side by N worker
processes on one machine, with the same records as one process.

- **Devices.** On a GPU node each worker sees one GPU (CUDA_VISIBLE_DEVICES; round robin when there are
  more workers than GPUs). On CPU each worker is given its share of the cores: OMP_NUM_THREADS and, where
  the cores go round, a CPU affinity of its own; no worker takes every core. `auto` is one worker per
  visible GPU, 1 on CPU.
- **Balance.** A worker sets up once (data, tokenizer, device), then takes the next pending run, in plan
  order, each time it finishes one: long and short runs balance without a schedule.
- **Failures.** A failed run does not stop the others. After a device fault other than running out of
  memory (CUDA 700, 719, an ECC error: the process's CUDA context is lost) the worker reports its run and
  stops; the healthy workers take the rest, instead of the bad GPU failing one run after another. The
  command's exit code is the most telling of the failed runs' (2, then 75, then any other), and the log
  names each failed run with its error line.
  SIGTERM (or Ctrl-C) is passed to every worker, which stops at its next step boundary: finished records
  stay, and the command exits 143 (130). A rerun trains only what is missing.
- **Progress.** Every worker's lines are tagged with its name and device; the command adds a line per
  finished run (`[run 3/12 done]`), with an ETA once one has finished.
- **The report** is written once, by this command, after the last run.

Each worker is `python -m job run --workers 1 --serve-runs`: it takes the command's resolved config from
JOB_WORKER_CONFIG (JSON; a config read once, so `--config /dev/stdin` or `<(...)` works and an edit of the
file mid-plan changes no run), reads run keys on stdin, one per line, and writes one JSON line per finished
run ({"key", "code", "error", "seconds"}) to the file descriptor named by JOB_WORKER_STATUS_FD. A worker
gets SIGTERM when the command dies, however it dies: none is left orphaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from job.config.plan import Run, plan_runs
from job.config.schema import JobConfig
from job.errors import Interrupted, UserError
from job.exit_codes import failure, most_telling
from job.output.log import line as log_line
from job.output.log import run_done, say, set_position
from job.output.storage import open_output
from job.pipeline import (
    SHARED_VARIABLE,
    WORKER_VARIABLE,
    check_output_dir,
    pending_runs,
    save_run,
    setup_session,
    train_one,
    write_report,
)
from job.runtime.cpu import CHOSEN, HANDED_VARIABLE, available_cpus
from job.runtime.device import nvidia_smi_list
from job.runtime.device_faults import poisons_process
from job.runtime.ranks import Ranks
from job.runtime.signals import StopRequest

STATUS_FD_VARIABLE = "JOB_WORKER_STATUS_FD"
CONFIG_VARIABLE = "JOB_WORKER_CONFIG"
_LINES = threading.Lock()  # one whole line at a time on stderr, from every worker's relay and the command


def emit(line: str) -> None:
    with _LINES:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


@dataclass(frozen=True)
class Slot:
    """One worker: its name, the device it trains on, and what its environment and CPU affinity get."""

    name: str  # "w0"
    device: str  # "gpu:3", "cpu (4 threads)"
    env: dict[str, str]
    cpus: tuple[int, ...] | None = None  # the cores it may run on; None: no affinity of its own


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them ("0", "3", "GPU-<uuid>"); []
    on CPU or without a usable GPU."""
    from job.runtime.device import gpu_available

    check = gpu_available()
    if not check.usable:
        if check.fault is not None:
            raise check.fault.error()
        return []
    import paddle

    count = paddle.device.cuda.device_count()
    named = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    slices = mig_slices(nvidia_smi_list(), named)
    if slices:  # CUDA shows a process one MIG slice only (the first): each worker is given its own by name
        return slices
    return named[:count] if named else [str(index) for index in range(count)]


def gpu_memory_mb(gpus: list[str]) -> list[int]:
    """Each visible GPU's total memory in MB, in `gpus`' order (Paddle's device properties; a MIG slice's
    from its profile name, 3g.20gb: 20,480); 0 where it cannot be read."""
    import paddle

    profiles = mig_profiles(nvidia_smi_list()) if any(name.startswith("MIG-") for name in gpus) else {}
    sizes = []
    for index, name in enumerate(gpus):
        profile = re.search(r"(\d+)gb", profiles.get(name, ""))
        try:
            sizes.append(int(profile.group(1)) * 1024 if profile else
                         int(paddle.device.cuda.get_device_properties(index).total_memory) >> 20)  # fmt: skip
        except (OSError, RuntimeError, ValueError, AssertionError):
            sizes.append(0)
    return sizes


GPU_LINE = re.compile(r"^GPU (\d+): .*\(UUID: (GPU-[^)]+)\)")
MIG_LINE = re.compile(r"^\s+MIG (\S+).*\(UUID: (MIG-[^)]+)\)")


def mig_profiles(listing: str) -> dict[str, str]:
    """MIG-<uuid> -> its profile (3g.20gb), as `nvidia-smi -L` names them."""
    return {found.group(2): found.group(1) for found in map(MIG_LINE.match, listing.splitlines()) if found}


def mig_slices(listing: str, visible: list[str]) -> list[str]:
    """The MIG slices (`MIG-<uuid>`, the name CUDA_VISIBLE_DEVICES takes) of the GPUs this process may use,
    from `nvidia-smi -L`'s lines; [] without MIG. `visible`: CUDA_VISIBLE_DEVICES's names (indices, GPU-
    or MIG- UUIDs); [] means every GPU. Slices named there directly are kept as they are."""
    if visible and all(name.startswith("MIG-") for name in visible):
        return visible if len(visible) > 1 else []  # one slice named: the plain path handles it
    slices: list[str] = []
    owner: tuple[str, str] | None = None
    for line in listing.splitlines():
        gpu, mig = GPU_LINE.match(line), MIG_LINE.match(line)
        if gpu:
            owner = (gpu.group(1), gpu.group(2))
        elif mig and owner is not None and (not visible or owner[0] in visible or owner[1] in visible):
            slices.append(mig.group(2))
    return slices


def worker_count(requested: int | str, device: str, gpus: Callable[[], list[str]] | None = None) -> int:
    """`workers` resolved: `auto` is one per visible GPU (1 on CPU, or with `device: cpu`)."""
    if requested != "auto":
        return int(requested)
    return max(1, len((gpus or visible_gpus)())) if device != "cpu" else 1


CONTEXT_MB = 512  # a process's CUDA context and cuBLAS/cuDNN workspaces, outside Paddle's allocator


def plan_slots(count: int, gpus: list[str], cpus: list[int], threads: int,
               memory_mb: list[int] | None = None) -> list[Slot]:  # fmt: skip
    """`count` workers over `gpus` (one each, round robin), or over the CPU: `threads` (the job's whole
    share) split evenly, and disjoint cores from `cpus` when there are enough for every worker. Workers
    sharing a GPU (more workers than GPUs) each get an equal cap of its memory (`memory_mb`, each GPU's
    total; Paddle's FLAGS_gpu_memory_limit_mb), so one cannot take what another needs and fail it as an
    out of memory, and each is told it shares (its records say so)."""
    share = max(1, threads // count)
    if gpus:
        slots = []
        for index in range(count):
            position = index % len(gpus)
            sharers = len(range(position, count, len(gpus)))
            env = {"CUDA_VISIBLE_DEVICES": gpus[position], "OMP_NUM_THREADS": str(share),
                   SHARED_VARIABLE: str(sharers)}  # fmt: skip
            if sharers > 1 and memory_mb and memory_mb[position] > 0:
                env["FLAGS_gpu_memory_limit_mb"] = str(max(1, memory_mb[position] // sharers - CONTEXT_MB))
            slots.append(Slot(f"w{index}", f"gpu:{gpus[position]}", env))
        return slots
    split = len(cpus) >= share * count
    return [
        Slot(f"w{index}", f"cpu ({share} threads)", {"OMP_NUM_THREADS": str(share), "CUDA_VISIBLE_DEVICES": ""},
             tuple(cpus[index * share:(index + 1) * share]) if split else None)
        for index in range(count)
    ]  # fmt: skip


def cpu_share() -> tuple[list[int], int]:
    """The cores this process may use and the threads it would train with (the user's OMP_NUM_THREADS
    when they set it, else every available core)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    chosen = "OMP_NUM_THREADS" in CHOSEN or not os.environ.get("OMP_NUM_THREADS", "").isdigit()
    return cores, available_cpus() if chosen else max(1, int(os.environ["OMP_NUM_THREADS"]))


@dataclass
class Outcome:
    key: str
    code: int
    error: str = ""
    seconds: float = 0.0
    worker: str = ""


@dataclass
class Worker:
    slot: Slot
    process: subprocess.Popen
    status: IO[str]
    busy: str | None = None  # the run it trains now
    last_error: str = ""
    threads: list[threading.Thread] = field(default_factory=list)


# ---------------------------------------------------------------- in the command


def run_parallel(*, config: JobConfig, stop: StopRequest, force: bool, count: int, command: list[str]) -> str | None:
    """Train the pending runs of `config`'s plan in `count` workers started as `command` (`python -m job
    run ... --serve-runs`), then write the report once. Raises the most telling failure when a run failed,
    Interrupted on a signal."""
    if int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1) > 1:
        raise UserError("workers and `job launch` are two ways to use several devices: under launch set workers: 1")
    output = open_output(config.output_dir)
    created = check_output_dir(output)
    plan = plan_runs(config)
    pending = pending_runs(config, output, plan, force, {run.key for run in plan})
    if pending:
        gpus = visible_gpus() if config.device != "cpu" else []
        cores, threads = cpu_share()
        workers = min(count, len(pending))
        slots = plan_slots(workers, gpus, cores, threads, gpu_memory_mb(gpus) if workers > len(gpus) > 0 else None)
        if gpus and len(slots) > len(gpus):
            say(f"{len(slots)} workers share {len(gpus)} GPU(s): several runs per GPU at once")
        stop.checkpoint()
        outcomes = drive(pending, command, slots, stop, config=json.dumps(config.model_dump(mode="json")))
        order = {run.key: index for index, run in enumerate(plan)}
        failed = sorted((outcome for outcome in outcomes if outcome.code != 0), key=lambda o: order.get(o.key, 0))
        for outcome in failed if stop.signum is None else []:  # a stop is not a failure
            say(f"failed: {outcome.key} (exit {outcome.code}{', ' + outcome.worker if outcome.worker else ''}): "
                f"{outcome.error or 'no error line'}")  # fmt: skip
        if stop.signum is not None:
            raise Interrupted(stop.signum)
        if failed and len(failed) == len(pending) and created:  # a new folder, nothing written: leave none behind
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when nothing was written into it
        elif failed:
            try:
                report = write_report(output, config.report_file, config.config_hash(), complete_only=output.lock_free)
            except UserError as exc:  # no run of this config finished: the failures are the news, not this
                say(f"no report: {exc}")
            else:
                if report:
                    say(f"report (without the failed runs): {report}")
        if failed:
            code = most_telling(outcome.code for outcome in failed)
            errors = list(dict.fromkeys(outcome.error for outcome in failed if outcome.error))
            cause = f": {errors[0]}" if len(errors) == 1 else f"; the first: {errors[0]}" if errors else ""
            raise RunsFailed(f"{len(failed)} of {len(pending)} run(s) failed ({', '.join(o.key for o in failed)})"
                             f"{cause}", code)  # fmt: skip
    return write_report(output, config.report_file, config.config_hash(), complete_only=output.lock_free)


class RunsFailed(Exception):
    """Some runs of a `--workers` command failed; `exit_code` is the most telling of theirs."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def drive(runs: list[Run], command: list[str], slots: list[Slot], stop: StopRequest, config: str) -> list[Outcome]:
    """Start a worker per slot (`config`: the resolved config as JSON), hand out the runs in plan order as
    workers come free, and collect one outcome per run (a worker that dies takes its run with it: that run
    fails with its exit code)."""
    events: queue.Queue[tuple[Worker, dict[str, Any] | None]] = queue.Queue()
    waiting = deque(run.key for run in runs)
    kinds = {run.key: run.strategy.name for run in runs}  # each run's strategy: the ETA's own speeds
    total, outcomes, started = len(runs), [], time.monotonic()
    names = ", ".join(f"{slot.name} {slot.device}" for slot in slots)
    emit(log_line(f"workers: {len(slots)} ({names}); {total} run(s) to train"))
    workers = [start_worker(slot, command, events, config) for slot in slots]
    for worker in workers:
        hand_out(worker, waiting, total)
    live = len(workers)
    signalled = False
    while live:
        if stop.signum is not None and not signalled:
            signalled = True
            waiting.clear()
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(stop.signum)
        try:
            worker, status = events.get(timeout=0.2)
        except queue.Empty:
            continue
        if status is None:  # the worker exited
            live -= 1
            code = worker.process.wait()
            code = code if code >= 0 else 128 - code
            if worker.busy is not None:
                outcomes.append(Outcome(worker.busy, code or 1, worker.last_error or f"the worker exited {code}",
                                        worker=f"{worker.slot.name} {worker.slot.device}"))  # fmt: skip
                worker.busy = None
            continue
        worker.busy = None
        outcome = Outcome(status["key"], int(status["code"]), str(status.get("error", "")),
                          float(status.get("seconds", 0.0)), f"{worker.slot.name} {worker.slot.device}")  # fmt: skip
        outcomes.append(outcome)
        timed = [(kinds[o.key], o.seconds) for o in outcomes if o.code == 0 and o.seconds > 0]
        finished = {o.key for o in outcomes}
        remaining = [kinds[run.key] for run in runs if run.key not in finished]
        emit(log_line(run_done(key=outcome.key, code=outcome.code, seconds=outcome.seconds, done=len(outcomes),
                           total=total, timed=timed, remaining=remaining, parallel=len(slots),
                           elapsed=time.monotonic() - started, where=outcome.worker)))  # fmt: skip
        if status.get("leaving"):  # a poisoned device context: this worker's next run would fail at once
            emit(log_line(f"{worker.slot.name} {worker.slot.device} stops after a device fault; {live - 1} worker(s) "
                          "take the remaining runs"))  # fmt: skip
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.process.stdin.close()  # type: ignore[union-attr]
        else:
            hand_out(worker, waiting, total)
    for key in waiting:  # every worker died with runs still waiting
        outcomes.append(Outcome(key, most_telling(o.code for o in outcomes) or 1, "not trained: no worker was left"))
    return outcomes


# Variables a Paddle launcher (or a shell that once ran one) leaves behind: inherited by a worker they would
# pin it to another device or make it wait for ranks that never come. The slot sets the device itself.
LAUNCH_VARIABLES = ("FLAGS_selected_gpus", "FLAGS_selected_xpus", "PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM",
                    "PADDLE_TRAINER_ENDPOINTS", "PADDLE_CURRENT_ENDPOINT", "PADDLE_RANK_IN_NODE", "PADDLE_LOCAL_RANK",
                    "PADDLE_GLOBAL_RANK", "PADDLE_GLOBAL_SIZE", "PADDLE_LOCAL_SIZE", "PADDLE_WORLD_DEVICE_IDS",
                    "PADDLE_LOCAL_DEVICE_IDS", "PADDLE_NNODES", "PADDLE_MASTER", "PADDLE_DISTRI_BACKEND")  # fmt: skip


def worker_environment(slot: Slot, status_fd: int, config: str = "{}") -> dict[str, str]:
    """The worker's environment: the command's, without the job's own thread choices and any launcher's
    variables, with the slot's device and threads and the command's config."""
    env = {key: value for key, value in os.environ.items() if key not in CHOSEN and key not in LAUNCH_VARIABLES}
    env.update(slot.env)
    env[CONFIG_VARIABLE] = config
    env[WORKER_VARIABLE] = f"{slot.name} {slot.device}"
    env[HANDED_VARIABLE] = "OMP_NUM_THREADS"  # the slot's share (both kinds of slot set it), the job's choice
    env[STATUS_FD_VARIABLE] = str(status_fd)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_worker(slot: Slot, command: list[str], events: queue.Queue, config: str) -> Worker:
    read_fd, write_fd = os.pipe()
    env = worker_environment(slot, write_fd, config)
    cpus = slot.cpus
    parent, prctl = os.getpid(), parent_death_signal()

    def pin() -> None:  # in the child, before it runs: its own cores, and an end with the command's
        if cpus:
            os.sched_setaffinity(0, cpus)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the command, which passes it on
        die_with_parent(parent, prctl)

    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env=env, pass_fds=(write_fd,), preexec_fn=pin, text=True, bufsize=1)  # fmt: skip
    os.close(write_fd)
    worker = Worker(slot, process, os.fdopen(read_fd, encoding="utf-8"))
    tag = f"[{slot.name} {slot.device}]"

    def relay() -> None:  # the worker's own lines, tagged
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            if "error: " in line:  # the CLI's last word, or a failed run's (after its time stamp)
                worker.last_error = line.split("error: ", 1)[1]
            emit(f"{tag} {line}")

    def statuses() -> None:
        for line in worker.status:
            with contextlib.suppress(ValueError):
                events.put((worker, json.loads(line)))
        relaying.join()  # every line of the worker printed before its exit is handled
        events.put((worker, None))

    relaying = threading.Thread(target=relay, daemon=True)
    relaying.start()
    watching = threading.Thread(target=statuses, daemon=True)
    watching.start()
    worker.threads = [relaying, watching]
    return worker


def parent_death_signal() -> Callable[[int, int], int] | None:
    """libc's prctl, loaded in the command (never between fork and exec, where loading a library can
    deadlock on a lock another thread held); None where there is none."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(parent: int, prctl: Callable[[int, int], int] | None) -> None:
    """In a worker (Linux): SIGTERM when the command that started it dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so no worker trains on as an orphan; if the command is already gone, now."""
    if prctl is not None:
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def worker_config() -> JobConfig:
    """In a worker: the command's config (CONFIG_VARIABLE), validated again as the command validated it."""
    from job.config.schema import validate_config

    text = os.environ.get(CONFIG_VARIABLE)
    if not text:
        raise UserError("--serve-runs is how `job run --workers N` starts its workers; run `job run --workers N`")
    return validate_config(json.loads(text), source="the command's config", subset=True)


def hand_out(worker: Worker, waiting: deque[str], total: int) -> None:
    """The next run to a free worker (its key and its place in the plan), or the end of its input when
    none is left."""
    assert worker.process.stdin is not None
    try:
        if waiting:
            worker.busy = waiting.popleft()
            worker.process.stdin.write(f"{worker.busy} {total - len(waiting)} {total}\n")
            worker.process.stdin.flush()
        else:
            worker.process.stdin.close()
    except (BrokenPipeError, OSError):
        pass  # it has exited: its run is accounted for when its exit is read


# ---------------------------------------------------------------- in a worker


def serve(config: JobConfig, stop: StopRequest, keys: Iterable[str] | None = None) -> None:
    """A worker: set up once, then train each run key read on stdin and report it on the status fd."""
    status_fd = int(os.environ[STATUS_FD_VARIABLE])
    output = open_output(config.output_dir)
    plan = plan_runs(config)
    session, runs = setup_session(config=config, output=output, runs=plan, planned=[run.key for run in plan],
                                  stop=stop, ranks=Ranks())  # fmt: skip
    by_key = {run.key: run for run in runs}
    with os.fdopen(status_fd, "w", encoding="utf-8", buffering=1) as status:
        for given in keys if keys is not None else sys.stdin:
            if not given.strip():
                continue
            key, *place = given.split()
            set_position(f"[run {place[0]}/{place[1]}] " if len(place) == 2 else "")
            started = time.monotonic()
            try:
                stop.raise_if_requested()
                result = train_one(session, by_key[key])
                assert result is not None  # one process: rank 0
                path = save_run(session, by_key[key], result)
                say(f"[{key}] saved {path}")
                report_status(status, key, 0, "", time.monotonic() - started)
            except BaseException as exc:
                mapped = failure(exc, output.where())
                error, code = mapped if mapped is not None else (exc, 1)
                say(f"error: [{key}] {error}")
                leaving = poisons_process(exc)  # its CUDA context is gone: every later run would fail in 1-2 s
                report_status(status, key, code, f"{error}", time.monotonic() - started, leaving=leaving)
                if mapped is None or isinstance(exc, Interrupted) or leaving:
                    if leaving:
                        say("this worker's device context is lost after that fault: it stops, and the other workers "
                            "take the remaining runs")  # fmt: skip
                    raise
                # The error's traceback holds train_one's frames: the failed run's model, gradients, AdamW
                # moments and activations. Dropped here, the next run loads into the memory they held.
                for held in {id(error): error, id(exc): exc}.values():
                    held.__traceback__ = None
                    held.__context__ = held.__cause__ = None
                del mapped, error, exc
                release_memory()


def release_memory() -> None:
    """Collect what a failed run left (its layers hold reference cycles) and, on a GPU, hand the
    allocator's cached blocks back, so the next run starts with the memory the failed one had."""
    import gc

    gc.collect()
    from job.runtime.device import on_gpu

    if on_gpu():
        import paddle

        paddle.device.cuda.empty_cache()


def report_status(status: IO[str], key: str, code: int, error: str, seconds: float, leaving: bool = False) -> None:
    """One finished run, for the command; `leaving`: this worker takes no more runs (hand it none)."""
    line = {"key": key, "code": code, "error": error[:500], "seconds": round(seconds, 3), "leaving": leaving}
    status.write(json.dumps(line) + "\n")
