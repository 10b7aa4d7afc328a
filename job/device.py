"""Device choice and CPU thread settings.

`set_cpu_thread_defaults` must run before `import paddle`: Paddle pins OMP_NUM_THREADS=1 when it is
unset, and MKL takes a slow path on AMD CPUs unless MKL_DEBUG_CPU_TYPE=5 (each measured at 2x).
On Intel CPUs that same setting would pin MKL to AVX2 and hide AVX-512 (1.4x slower here), so it
is set on AMD only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.device_faults import DeviceFault, device_fault
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
    chosen = "OMP_NUM_THREADS" not in os.environ
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // local_ranks())))
    if (vendor if vendor is not None else cpu_vendor()) in AMD_VENDORS:
        os.environ.setdefault("MKL_DEBUG_CPU_TYPE", "5")
    return chosen


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


@dataclass(frozen=True)
class DeviceChoice:
    name: str  # "cpu" or "gpu"
    description: str  # for logs and the report
    reason: str
    capability: tuple[int, int] | None = None  # a GPU's compute capability, (8, 0) for an A100


@dataclass(frozen=True)
class GpuCheck:
    """Whether Paddle can use a GPU here, why not when it cannot, and the device fault when asking
    failed (a driver too old for the build, a stub libcuda.so...)."""

    usable: bool
    why: str
    fault: DeviceFault | None = None


def gpu_available() -> GpuCheck:
    """Asks Paddle, never crashes: on a node whose driver cannot serve this build, Paddle's device count
    raises the CUDA error (paddle/phi/backends/gpu/cuda/cuda_info.cc enforces cudaGetDeviceCount), and
    that comes back as `fault` for the caller to act on as the `device` setting says."""
    import paddle

    if not paddle.is_compiled_with_cuda():
        return GpuCheck(False, "this Paddle build has no CUDA support")
    try:
        count = paddle.device.cuda.device_count()
    except (OSError, RuntimeError) as exc:
        fault = device_fault(exc)
        if fault is None:
            raise
        return GpuCheck(False, f"the GPU cannot be used ({fault.detail})", fault)
    if count == 0:
        return GpuCheck(False, "Paddle has CUDA support but sees no GPU")
    return GpuCheck(True, f"{count} GPU(s) visible")


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


def select_device(requested: str) -> DeviceChoice:
    """Pick and activate the device. `gpu` without a usable GPU is an error (exit 2). A GPU build whose
    driver fails when asked stops `gpu` and `auto` alike with the fault's own exit code and fix: no
    fallback to CPU is possible in that process, since paddle.seed then seeds every CUDA device and
    raises the same CUDA error (paddle/framework/random.py), and hours of training on the CPU of a GPU
    node would be the wrong answer anyway."""
    import paddle

    check = gpu_available()
    if requested != "cpu" and check.fault is not None:
        raise check.fault.error()
    if requested == "gpu" and not check.usable:
        raise UserError(f"device 'gpu' was requested but {check.why}; use --device cpu or --device auto")
    if requested in ("gpu", "auto") and check.usable:
        # Under paddle.distributed.launch each process is given its own GPU (FLAGS_selected_gpus).
        index = int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0] or 0)  # noqa: SIM112 - Paddle's name
        paddle.set_device(f"gpu:{index}")
        name = paddle.device.cuda.get_device_name(index)
        major, minor = paddle.device.cuda.get_device_capability(index)
        description = f"gpu:{index} ({name}, compute capability {major}.{minor})"
        return DeviceChoice("gpu", description, f"{requested}: {check.why}", (major, minor))
    paddle.set_device("cpu")
    use_contiguous_kernels()
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    reason = "requested" if requested == "cpu" else f"auto: {check.why}, falling back to CPU"
    return DeviceChoice("cpu", f"cpu ({threads} threads)", reason)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Compute capabilities: bf16 tensor cores from Ampere (8.0), fp16 tensor cores from Volta (7.0).
# Paddle's own is_bfloat16_supported answers from the same number (>= 80) on CUDA.
BF16_CAPABILITY = (8, 0)
FP16_CAPABILITY = (7, 0)


def resolve_precision(requested: str, device: DeviceChoice) -> str:
    """The precision training runs in. Mixed precision is for GPUs: on CPU, Paddle's autocast leaves
    matmuls in fp32 (measured with paddle 3.3.1: a Linear under auto_cast(dtype='bfloat16') returns
    float32), so bf16/fp16 there would only pretend. On a GPU `auto` is bf16 from compute capability
    8.0 (A100, L4, H100), fp16 with the loss scaler on 7.x (V100, T4), fp32 below."""
    if requested == "fp32":
        return "fp32"
    if device.name != "gpu":
        if requested == "auto":
            return "fp32"
        raise UserError(
            f"config key 'precision': {requested} needs a GPU (on CPU, Paddle's autocast computes in fp32); "
            "use precision: auto or fp32 on CPU"
        )
    capability = device.capability or (0, 0)
    if requested == "bf16" and capability < BF16_CAPABILITY:
        raise UserError(
            f"config key 'precision': {device.description} has no bf16 support (it needs compute capability "
            "8.0 or newer); use fp16 or fp32"
        )
    if requested != "auto":
        return requested
    if capability >= BF16_CAPABILITY:
        return "bf16"
    return "fp16" if capability >= FP16_CAPABILITY else "fp32"


EVAL_BATCH_SIZES = {"cpu": 16, "gpu": 128}  # what `auto` means; the reasons are in the config reference


def resolve_eval_batch_size(requested: int | str, device: DeviceChoice) -> int:
    """The evaluation (and predict) batch size: the number given, or for `auto` the device's default."""
    return EVAL_BATCH_SIZES[device.name] if requested == "auto" else int(requested)


def use_contiguous_kernels() -> None:
    """Paddle 3 makes transpose and slice return strided views by default; on CPU every later reshape,
    scale or matmul then first copies them with a slow generic kernel. Contiguous results made this
    model's training step 25% faster here (same numbers). A value the user set is kept."""
    import paddle

    if "FLAGS_use_stride_kernel" not in os.environ:
        paddle.set_flags({"FLAGS_use_stride_kernel": False})


def strided_views() -> bool:
    """Whether Paddle currently returns strided views (recorded in results.json)."""
    import paddle

    return bool(paddle.get_flags("FLAGS_use_stride_kernel")["FLAGS_use_stride_kernel"])


def on_gpu() -> bool:
    """Whether Paddle computes on a GPU now. Then every host read of a tensor (float(loss), a bool of a
    comparison) waits for the device to finish all queued work, so the training loop reads losses once
    per logging_steps and clips without reading (job.train); on CPU every op has finished when it returns,
    so a read costs nothing."""
    import paddle

    return paddle.device.get_device().startswith("gpu")


def batch_on_device(arrays: dict[str, Any]) -> dict[str, Any]:
    """A batch's arrays as tensors on the current device. On a GPU they go through pinned host memory and
    a copy the host does not wait for (Tensor._copy_to(place, blocking=False): an async copy on Paddle's
    stream), so building the next batch overlaps the device's work; from pageable memory the copy would
    hold the host until the device caught up. On CPU a plain to_tensor."""
    import paddle

    place = paddle.framework._current_expected_place()
    if not isinstance(place, paddle.CUDAPlace):
        return {key: paddle.to_tensor(value) for key, value in arrays.items()}
    pinned = paddle.CUDAPinnedPlace()
    return {key: paddle.to_tensor(value, place=pinned)._copy_to(place, False) for key, value in arrays.items()}


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
