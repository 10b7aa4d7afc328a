"""Device choice and CPU thread settings.

`set_cpu_thread_defaults` must run before `import paddle`: Paddle pins OMP_NUM_THREADS=1 when it is
unset, and MKL takes a slow path on AMD CPUs unless MKL_DEBUG_CPU_TYPE=5 (each measured at 2x).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from job.errors import UserError


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


def set_cpu_thread_defaults() -> None:
    """Use every available core unless the user chose otherwise (their settings win)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(available_cpus()))
    os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")


@dataclass(frozen=True)
class DeviceChoice:
    name: str  # "cpu" or "gpu"
    description: str  # for logs and the report
    reason: str


def gpu_available() -> tuple[bool, str]:
    import paddle

    if not paddle.is_compiled_with_cuda():
        return False, "this Paddle build has no CUDA support"
    count = paddle.device.cuda.device_count()
    if count == 0:
        return False, "Paddle has CUDA support but sees no GPU"
    return True, f"{count} GPU(s) visible"


def select_device(requested: str) -> DeviceChoice:
    """Pick and activate the device. `gpu` without a usable GPU is a user error."""
    import paddle

    has_gpu, why = gpu_available()
    if requested == "gpu" and not has_gpu:
        raise UserError(f"device 'gpu' was requested but {why}; use --device cpu or --device auto")
    if requested in ("gpu", "auto") and has_gpu:
        paddle.set_device("gpu:0")
        name = paddle.device.cuda.get_device_name(0)
        return DeviceChoice("gpu", f"gpu:0 ({name})", f"{requested}: {why}")
    paddle.set_device("cpu")
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    reason = "requested" if requested == "cpu" else f"auto: {why}, falling back to CPU"
    return DeviceChoice("cpu", f"cpu ({threads} threads)", reason)


def reset_peak_memory() -> None:
    """Reset the high-water mark so each strategy's peak is its own."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
        paddle.device.cuda.reset_max_memory_allocated()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS)


def peak_memory_mb() -> float:
    """GPU: peak allocated by Paddle. CPU: the process's peak resident memory since the reset."""
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.get_device().startswith("gpu"):
        return round(paddle.device.cuda.max_memory_allocated() / 2**20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
