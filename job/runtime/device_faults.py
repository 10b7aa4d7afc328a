"""GPU, driver and NCCL faults told apart from I/O errors, each with the exit code a queue needs and
the fix.

Paddle raises a failed CUDA, cuBLAS, cuDNN, cuRAND or NCCL call as an EXTERNAL error, and its pybind
translator (paddle/fluid/pybind/exception.cc) hands that to Python as an `OSError` whose text is
`(External) <what failed> (at <file>:<line>)`; other kinds keep their name the same way (3.3.1's
`core.__unittest_throw_exception__` gives `(PermissionDenied) ... (at ...)`, tested). The CUDA part is
built by paddle/phi/core/enforce.h as `CUDA error(<code>), <cudaGetErrorString>. [Hint: '<enum>'. ...]`,
and NCCL's as `NCCL error(<code>), <ncclGetErrorString>.`. Told by type alone, "CUDA driver version is
insufficient" would read as an I/O error and be retried (exit 75) on every queue, for hours.

A fault of the node or the image (a driver too old for the image's CUDA, a GPU architecture the wheel
has no kernels for, no GPU in the container, an NCCL set-up that cannot work) exits 2 with its fix;
anything else the device reports (an ECC error, a lost GPU, a peer that died) exits 75.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from job.errors import RetryableError, UserError

# The oldest Linux driver each CUDA build of Paddle runs on. 12.6 is Paddle's own install docs; 11.8
# and 12.9 are NVIDIA's CUDA toolkit release notes (the GA driver of that toolkit).
DRIVER_FLOORS = {"11.8": "520.61.05", "12.6": "550.54.14", "12.9": "575.51.03"}
PADDLE_INDEX = "https://www.paddlepaddle.org.cn/packages/stable/{build}/"
IMAGE_CUDA = "12.6"  # Dockerfile.gpu's default PADDLE_INDEX_URL (cu126)
NEWEST_BUILD = "cu129"  # the wheels with Blackwell (sm_100, sm_120) kernels

PERMANENT_CUDA = {
    34: "libcuda.so in the container is CUDA's stub, not the host's driver: run with the NVIDIA container "
    "toolkit (--gpus all; compose: gpu-job; Kubernetes: the NVIDIA device plugin)",
    35: "the NVIDIA driver on this node is older than this image's CUDA {cuda} runtime needs: install driver "
    ">= {floor}, or build the image for an older CUDA with --build-arg PADDLE_INDEX_URL="
    + PADDLE_INDEX.format(build="cu118"),
    46: "the GPU is in exclusive-process compute mode and another process holds it: give each process a GPU of its "
    "own (workers: auto puts one worker on each), or set the default mode (`nvidia-smi -c DEFAULT`)",
    100: "the container sees no GPU: run it with --gpus all (compose: gpu-job; Kubernetes: request "
    "nvidia.com/gpu), or use --device cpu",
    101: "CUDA_VISIBLE_DEVICES (or --gpus) names a GPU this node does not have; `nvidia-smi -L` lists them",
    209: "this Paddle build has no kernels for this GPU's architecture: for Blackwell (sm_100, sm_120) build "
    f"the image with --build-arg PADDLE_INDEX_URL={PADDLE_INDEX.format(build=NEWEST_BUILD)}",
    803: "the node's NVIDIA kernel module and driver libraries are of different versions (a driver update "
    "without a reboot?): reboot the node or reinstall the driver",
    804: "this GPU cannot use CUDA forward compatibility: install a driver >= {floor} for CUDA {cuda}",
    222: "the NVIDIA driver on this node is too old to compile this image's PTX (CUDA {cuda}): install driver >= "
    "{floor}, or build the image for an older CUDA with --build-arg PADDLE_INDEX_URL="
    + PADDLE_INDEX.format(build="cu118"),
    802: "the GPUs of this NVSwitch node are not ready: nvidia-fabricmanager is not running (`systemctl start "
    "nvidia-fabricmanager`, its version the driver's; on a cloud image, one that ships it)",
}
# cudaGetErrorString's text for the codes above: Paddle's collectives check CUDA calls with CUDA_CHECK
# (paddle/phi/core/distributed/nccl_tools.h), which quotes this text with no number.
CUDA_TEXTS = {
    "CUDA driver is a stub library": 34,
    "CUDA driver version is insufficient for CUDA runtime version": 35,
    "CUDA-capable device(s) is/are busy or unavailable": 46,
    "no CUDA-capable device is detected": 100,
    "invalid device ordinal": 101,
    "no kernel image is available for execution on the device": 209,
    "the provided PTX was compiled with an unsupported toolchain": 222,
    "system not yet initialized": 802,
    "system has unsupported display driver / cuda driver combination": 803,
    "forward compatibility was attempted on non supported HW": 804,
    "out of memory": 2,
}
NCCL_FIX = (
    "NCCL could not set up communication between the GPUs: give the container shared memory "
    "(compose sets shm_size: 8gb; Kubernetes: an emptyDir with medium: Memory at /dev/shm), and rerun with "
    "NCCL_DEBUG=INFO for the cause"
)
ARCH_FIX = PERMANENT_CUDA[209]
LIBRARY_FIX = (
    "a CUDA library did not load: in the GPU image LD_LIBRARY_PATH covers /usr/local/nvidia/lib64 (GKE, "
    "Container-Optimized OS) and the NVIDIA container toolkit mounts libcuda.so; elsewhere install the "
    "NVIDIA driver, or use --device cpu"
)

OUT_OF_MEMORY_FIX = (
    "another process may hold the device's memory (`nvidia-smi` lists them: stop them or use another GPU), "
    "or lower batch_size, eval_batch_size or max_seq_length"
)
# cudaErrorMemoryAllocation (2) and the libraries' own allocation failures: the same fault as Paddle's
# "Out of memory error on GPU" MemoryError, which a retry on the same node and config meets again.
ALLOCATION_FAILED = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "cudaErrorMemoryAllocation")
PAGE_OUT = re.compile(r"Out of memory error on (?:GPU|XPU|device) \d+\.[^\n]*")

CUDA_ERROR = re.compile(r"CUDA error\((\d+)\)")
NCCL_ERROR = re.compile(r"NCCL error\((\d+)\)")
# NCCL_CHECK and CUDA_CHECK of paddle/phi/core/distributed/nccl_tools.h (comm init, all-reduce,
# broadcast): `Failed, NCCL error <file>:<line> '<ncclGetErrorString>'`, no number.
QUOTED_NCCL = re.compile(r"Failed, NCCL error [^']*'([^']*)'")
QUOTED_CUDA = re.compile(r"Failed, cuda error [^']*'([^']*)'")
# ncclGetErrorString's text of the results a retry may pass: a CUDA fault inside NCCL (1), and a peer
# that failed or a network that dropped (6). System, internal, invalid-argument and invalid-usage
# errors come back on every retry of the same set-up.
NCCL_TRANSIENT_TEXTS = ("unhandled cuda error", "remote process exited or there was a network error")
# Since Paddle 3.1, a GPU whose architecture the wheel has no kernels for (Blackwell on a cu126 wheel)
# fails as the first GPU context is built, with this RuntimeError, no CUDA code and no (External) tag
# (paddle/phi/backends/gpu/gpu_resources.cc; its stderr says "Mismatched GPU Architecture: The installed
# PaddlePaddle package was compiled for ... but your current GPU is 120").
ARCH_TEXTS = ("Unsupported GPU architecture", "Mismatched GPU Architecture")
# ncclUnhandledCudaError (1) carries a CUDA fault of its own; ncclRemoteError (6) is a peer that failed
# or went away. System, internal and usage errors (2-5) come back on every retry of the same set-up.
NCCL_TRANSIENT = (1, 6)
# Paddle's dynload (paddle/phi/backends/dynload/dynamic_loader.cc) when a CUDA library is missing.
LIBRARY_MISSING = re.compile(r"dynamic library \((lib[\w.+-]+)\) that Paddle depends on is not configured correctly")


@dataclass(frozen=True)
class DeviceFault:
    """What the device reported, and whether the node or image must change before a retry can help."""

    detail: str  # Paddle's message, first line, without its source location
    fix: str | None  # None: transient, retry

    def error(self) -> UserError | RetryableError:
        if self.fix is not None:
            return UserError(f"GPU fault: {self.detail}; {self.fix}")
        return RetryableError(f"GPU fault (retrying may help): {self.detail}")


def device_fault(exc: BaseException) -> DeviceFault | None:
    """The device fault `exc` reports, or None when it is something else (a real I/O error)."""
    if not isinstance(exc, OSError | RuntimeError):
        return None
    text = str(exc)
    cuda, nccl, library = CUDA_ERROR.search(text), NCCL_ERROR.search(text), LIBRARY_MISSING.search(text)
    arch = any(marker in text for marker in ARCH_TEXTS)
    if not (cuda or nccl or library or arch or "(External)" in text or "ExternalError" in text):
        return None
    detail = _summary(text)
    if library:
        return DeviceFault(detail, LIBRARY_FIX)
    if arch:
        return DeviceFault(detail, ARCH_FIX)
    quoted_cuda, quoted_nccl = QUOTED_CUDA.search(text), QUOTED_NCCL.search(text)
    code = int(cuda.group(1)) if cuda else _cuda_code(quoted_cuda.group(1)) if quoted_cuda else None
    if any(name in text for name in ALLOCATION_FAILED) or code == 2:
        return DeviceFault(detail, OUT_OF_MEMORY_FIX)
    if code is not None:
        fix = PERMANENT_CUDA.get(code)
        return DeviceFault(detail, fix.format(cuda=cuda_version(), floor=driver_floor()) if fix else None)
    if nccl:
        return DeviceFault(detail, None if int(nccl.group(1)) in NCCL_TRANSIENT else NCCL_FIX)
    if quoted_nccl:
        transient = quoted_nccl.group(1).lower().startswith(NCCL_TRANSIENT_TEXTS)
        return DeviceFault(detail, None if transient else NCCL_FIX)
    if "ARCH_MISMATCH" in text:  # cuBLAS / cuDNN: no kernel for this architecture
        return DeviceFault(detail, ARCH_FIX)
    return DeviceFault(detail, None)


def out_of_memory(exc: MemoryError, what: str = "the job", advice: str = OUT_OF_MEMORY_FIX) -> UserError:
    """Paddle raises an exhausted allocator (GPU or host) as MemoryError, its first line only
    "(ResourceExhausted)"; Python raises a host allocation it cannot make the same way. Either is exit 2
    with Paddle's own "Out of memory error on GPU 0. Cannot allocate ..." line kept, and the fix."""
    text = str(exc)
    found = PAGE_OUT.search(text)
    detail = found.group(0).strip() if found else _summary(text) if text.strip() else "MemoryError"
    return UserError(f"{what} ran out of memory ({detail}); {advice}")


def as_job_error(exc: BaseException) -> UserError | RetryableError | None:
    """`exc` as the job's own error when it is a device fault, else None."""
    fault = device_fault(exc)
    return fault.error() if fault is not None else None


def poisons_process(exc: BaseException) -> bool:
    """True for a device fault after which the process's CUDA context is unusable and CUDA's documentation
    says the process must be relaunched (700 illegal address, 719 launch failure, 214 ECC, a lost GPU):
    every device fault but running out of memory, which the next run, freed of the failed one, may not."""
    fault = device_fault(exc)
    return fault is not None and fault.fix != OUT_OF_MEMORY_FIX


def raise_if_device_fault(exc: BaseException) -> None:
    """In an `except OSError` meant for files or downloads: a device fault is raised as what it is."""
    error = as_job_error(exc)
    if error is not None:
        raise error from None


def _cuda_code(text: str) -> int | None:
    """The CUDA error code of cudaGetErrorString's `text`, for the codes the job acts on."""
    return next((code for known, code in CUDA_TEXTS.items() if text.strip().rstrip(".") == known), None)


def _summary(text: str) -> str:
    """The line that says what failed: Paddle's summary line when it printed a C++ traceback first,
    without the `(at file:line)` of its source and the hint's long prose."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    wanted = next((line for line in lines if "error(" in line or "Failed, " in line or line.startswith("(")),
                  lines[0] if lines else text)  # fmt: skip
    wanted = re.sub(r"\s*\(at [^)]*\)\s*$", "", wanted)
    return wanted[:300]


def cuda_version() -> str:
    """The CUDA version this Paddle was built with ("12.6"), or the image's default when unknown."""
    try:
        import paddle

        version = str(paddle.version.cuda())
    except (ImportError, AttributeError):
        return IMAGE_CUDA
    return version if re.fullmatch(r"\d+\.\d+", version) else IMAGE_CUDA


def driver_floor(cuda: str | None = None) -> str:
    """The oldest driver for CUDA `cuda` (default: this Paddle build's), e.g. "550.54.14"."""
    cuda = cuda or cuda_version()
    return DRIVER_FLOORS.get(cuda, f"the one NVIDIA's CUDA {cuda} release notes give")
