"""Peak memory of a run, measured above its own starting point on Paddle's tensor allocator (device
memory on a GPU, host memory on CPU), so a run's figure is the same whether it runs first or after
others in the process.

The process's resident high-water mark, used before, was not: freed memory stays resident, so a run
inherited what earlier runs left (measured on the full-size model and the same 32 rows: LoRA peaked at
1,290 MB first and at 2,620 MB after full fine-tuning, above full fine-tuning's own 2,237 MB)."""

from __future__ import annotations

import gc

from job.runtime.device import on_gpu


def _allocated_now() -> int:
    import paddle

    if on_gpu():
        return int(paddle.device.cuda.memory_allocated())
    return int(paddle.base.core.host_memory_stat_current_value("Allocated", 0))


def _allocated_peak() -> int:
    import paddle

    if on_gpu():
        return int(paddle.device.cuda.max_memory_allocated())
    return int(paddle.base.core.host_memory_stat_peak_value("Allocated", 0))


def reset_peak() -> None:
    """Start the allocator's peak again from what is allocated now."""
    import paddle

    if on_gpu():
        paddle.device.cuda.reset_max_memory_allocated()
        paddle.device.cuda.reset_max_memory_reserved()
    else:
        paddle.base.core.host_memory_stat_reset_peak_value("Allocated", 0)


def start_memory_meter() -> int:
    """A run's starting point: what earlier runs left unreferenced is collected, the allocator's peak
    is reset, and the bytes still allocated are returned (the run's figure is measured above them)."""
    gc.collect()
    reset_peak()
    return _allocated_now()


def peak_reserved_mb() -> float | None:
    """On a GPU, the peak of what Paddle's allocator reserved from the driver (what nvidia-smi sees of the
    process, above the CUDA context), in MiB; None on CPU, where the host allocator reserves nothing apart."""
    import paddle

    return round(paddle.device.cuda.max_memory_reserved() / 2**20, 1) if on_gpu() else None


def peak_memory_mb(start: int) -> float:
    """The peak tensor memory since `start_memory_meter` returned `start`, above `start`, in MiB."""
    return round(max(0, _allocated_peak() - start) / 2**20, 1)


def allocated_mb() -> float:
    """What Paddle's allocator holds now (device memory on a GPU, host memory on CPU), in MiB."""
    return round(_allocated_now() / 2**20, 1)
