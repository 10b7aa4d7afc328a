"""Peak memory of a run: Paddle's allocator on a GPU, the process's resident high-water mark on CPU."""

from __future__ import annotations

import contextlib
from pathlib import Path

from job.runtime.device import on_gpu


def reset_peak_memory() -> None:
    """Reset the high-water mark so each strategy's peak is its own."""
    import paddle

    if on_gpu():
        paddle.device.cuda.reset_max_memory_allocated()
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM (peak RSS)


def peak_memory_mb() -> float:
    """GPU: peak allocated by Paddle. CPU: the process's peak resident memory since the reset."""
    import paddle

    if on_gpu():
        return round(paddle.device.cuda.max_memory_allocated() / 2**20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
