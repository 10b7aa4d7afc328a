"""The device: which one trains (and why), the precision and evaluation batch it resolves, whether
host reads are costly there, and how batches get onto it. The CPU process settings made before Paddle
is imported are job.runtime.cpu; memory metering is job.runtime.memory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from job.errors import UserError
from job.runtime.device_faults import DeviceFault, device_fault


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


def nvidia_smi_list() -> str:
    """`nvidia-smi -L`: the node's GPUs and their MIG slices; "" where it is missing or fails."""
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def listed_gpus(listing: str) -> int:
    """How many GPUs `nvidia-smi -L` lists."""
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))


def build_context() -> None:
    """One tiny op on the device just selected, so that every fault of building the GPU context (since
    Paddle 3.1 an architecture the wheel lacks raises here, at the first tensor, not at set_device)
    surfaces now, with its fix, and never later as a failed model load or a traceback at the first step."""
    import paddle

    try:
        paddle.ones([1]).sum().item()
    except (OSError, RuntimeError) as exc:
        fault = device_fault(exc)
        if fault is None:
            raise
        raise fault.error() from None


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
        build_context()
        name = paddle.device.cuda.get_device_name(index)
        major, minor = paddle.device.cuda.get_device_capability(index)
        description = f"gpu:{index}{physical_name(index)} ({name}, compute capability {major}.{minor})"
        return DeviceChoice("gpu", description, f"{requested}: {check.why}", (major, minor))
    paddle.set_device("cpu")
    use_contiguous_kernels()
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    reason = "requested" if requested == "cpu" else f"auto: {check.why}, falling back to CPU"
    if requested == "auto" and not paddle.is_compiled_with_cuda() and (gpus := listed_gpus(nvidia_smi_list())):
        reason += (f". WARNING: nvidia-smi lists {gpus} GPU(s), but this is Paddle's CPU build: install the GPU build "
                   "(`make venv-gpu`, then VENV=.venv-gpu) or run the GPU image (`make run-gpu`)")  # fmt: skip
    return DeviceChoice("cpu", f"cpu ({threads} threads)", reason)


def physical_name(index: int) -> str:
    """The node's own name of visible GPU `index` when CUDA_VISIBLE_DEVICES renumbers them (a worker of
    `--workers`, a scheduler's container): ` = node GPU 3` or ` = node GPU GPU-8f2e...`, so a record names
    the GPU it trained on, not every worker's `gpu:0`."""
    names = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return f" = node GPU {names[index]}" if index < len(names) else ""


PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Compute capabilities: bf16 tensor cores from Ampere (8.0), fp16 tensor cores from Volta (7.0).
# Paddle's own is_bfloat16_supported answers from the same number (>= 80) on CUDA.
BF16_CAPABILITY = (8, 0)
FP16_CAPABILITY = (7, 0)


def resolve_compile(requested: str) -> bool:
    """Whether the training forward runs as a static graph (job.training.loop.compiled_forward). `auto`
    is off. On CPU, A/B in one process with the job's own settings and batches (2 cores, batch 8, TNEWS
    lengths): LoRA 353-452 ms a step eager against 406-458 static, full fine-tuning 702-840 against
    750-797, and tracing every batch length first cost 10-20 s. On a GPU, where a step is many small
    kernel launches and CINN may fuse element-wise ops, it has not been measured: try `compile: on`
    with `make bench BENCH_ARGS="--set compile=on"`."""
    return requested == "on"


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


TF32_CAPABILITY = (8, 0)  # TF32 tensor cores: Ampere (A100) and newer


def tf32_matmuls(device: DeviceChoice) -> bool:
    """Whether fp32 matmuls run as TF32 (10-bit mantissa) here: Paddle turns cuBLAS's TF32 on by default
    (phi::allow_tf32_cublas; core.get_cublas_switch(), True on a CUDA build unless switched off), and
    the GPU uses it from compute capability 8.0 (A100, H100, L4). Recorded with each run: its "fp32"
    is TF32 then, as PyTorch's is only with allow_tf32."""
    if device.name != "gpu" or (device.capability or (0, 0)) < TF32_CAPABILITY:
        return False
    from paddle.base import core

    return bool(core.get_cublas_switch())


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
    per logging_steps and clips without reading (job.training.loop); on CPU every op has finished when it returns,
    so a read costs nothing."""
    import paddle

    return paddle.device.get_device().startswith("gpu")


def synchronize() -> None:
    """On a GPU, wait until every queued kernel has run (they run asynchronously); nothing on CPU, where
    every op has finished when it returns."""
    import paddle

    if on_gpu():
        paddle.device.synchronize()


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
