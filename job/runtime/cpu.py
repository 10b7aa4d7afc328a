"""CPU process settings, made before `import paddle` (`python -m job` calls set_cpu_thread_defaults first).

Paddle pins OMP_NUM_THREADS=1 when it is unset, and MKL takes a slow path on AMD CPUs unless
MKL_DEBUG_CPU_TYPE=5 (each measured at 2x). On Intel CPUs that same setting would pin MKL to AVX2 and
hide AVX-512 (1.4x slower here), so it is set on AMD only.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any


def available_cpus() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup CPU quota (containers)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return max(1, min(count, quota)) if quota else count


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """The `vendor_id` of /proc/cpuinfo (GenuineIntel, AuthenticAMD, ...), or "" when unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")  # Hygon CPUs are AMD Zen designs


def local_ranks() -> int:
    """Processes paddle.distributed.launch starts on this machine (PADDLE_LOCAL_SIZE), 1 otherwise."""
    raw = os.environ.get("PADDLE_LOCAL_SIZE", "")
    return int(raw) if raw.isascii() and raw.isdigit() and int(raw) > 0 else 1


def set_cpu_thread_defaults(vendor: str | None = None) -> bool:
    """Use every available core, shared out between the ranks a launch starts here, and MKL's fast
    kernels on AMD, unless the user chose otherwise. Returns whether the job chose OMP_NUM_THREADS."""
    handed = "OMP_NUM_THREADS" in os.environ.get(HANDED_VARIABLE, "").split(",")  # a worker's share
    chosen = "OMP_NUM_THREADS" not in os.environ or handed
    if chosen:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // local_ranks())))
        CHOSEN.add("OMP_NUM_THREADS")
    if (vendor if vendor is not None else cpu_vendor()) in AMD_VENDORS and "MKL_DEBUG_CPU_TYPE" not in os.environ:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
        CHOSEN.add("MKL_DEBUG_CPU_TYPE")
    return chosen


# The variables set_cpu_thread_defaults set itself (not the user): `job launch` leaves them out of the
# ranks' environment, so each rank chooses its own share of the cores.
CHOSEN: set[str] = set()
# A `--workers` worker's OMP_NUM_THREADS is its share of the cores, which the job set, not the user: the
# command names such variables here, so the worker treats them as its own choice (and drops Paddle's warning).
HANDED_VARIABLE = "JOB_CHOSEN_VARIABLES"


# Paddle's import prints these two lines whenever OMP_NUM_THREADS > 1 (a warning meant for
# data-parallel OpenBLAS builds; the wheels use MKL). Said after the job itself chose the value,
# they only alarm; any other output passes.
PADDLE_THREAD_WARNING = (
    "WARNING: OMP_NUM_THREADS set to",
    "PLEASE USE OMP_NUM_THREADS WISELY.",
)


class WithoutThreadWarning:
    """A text stream that drops Paddle's start-up OMP_NUM_THREADS warning and passes everything else."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._dropped_line = False

    def write(self, text: str) -> int:
        if text.startswith(PADDLE_THREAD_WARNING):
            self._dropped_line = True
            return len(text)
        if self._dropped_line and text == "\n":  # print()'s line end of the dropped line
            self._dropped_line = False
            return len(text)
        self._dropped_line = False
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def keep_freed_memory() -> None:
    """glibc hands large freed blocks back to the OS, and the next step page-faults them in again
    (full fine-tuning frees and reallocates hundreds of MB a step). Keeping them made full fine-tuning
    ~10% faster here; the process then holds its peak memory until it exits, as a batch job would
    anyway. Skipped when the user tunes malloc themselves or the C library is not glibc."""
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameters from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)
