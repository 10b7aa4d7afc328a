"""GPU, driver and NCCL faults exit with the code a queue needs: 2 with the fix when the node or the
image must change, 75 when a retry may pass. Paddle's own messages (the format strings of
paddle/phi/core/enforce.h with CUDA's and NCCL's error strings) are raised where Paddle would raise
them: at device selection, while the model loads, in a training step, through the CLI."""

from __future__ import annotations

from pathlib import Path

import paddle
import pytest
from click.testing import CliRunner

from job.cli import main
from job.runtime.device_faults import DRIVER_FLOORS, device_fault, driver_floor

SOURCE = " (at /paddle/paddle/phi/backends/gpu/cuda/cuda_info.cc:64)\n"
INSUFFICIENT_DRIVER = (
    "(External) CUDA error(35), CUDA driver version is insufficient for CUDA runtime version. \n"
    "  [Hint: 'cudaErrorInsufficientDriver'. This indicates that the installed NVIDIA CUDA driver is older than "
    "the CUDA runtime library. This is not a supported configuration.Users should install an updated NVIDIA "
    "display driver to allow the application to run.]" + SOURCE
)
NO_KERNEL_IMAGE = (
    "(External) CUDA error(209), no kernel image is available for execution on the device. \n"
    "  [Hint: 'cudaErrorNoKernelImageForDevice'. This indicates that there is no kernel image available that is "
    "suitable for the device.]" + SOURCE
)
NO_DEVICE = (
    "(External) CUDA error(100), no CUDA-capable device is detected. \n"
    "  [Hint: 'cudaErrorNoDevice'. This indicates that no CUDA-capable devices were detected by the installed "
    "CUDA driver.]" + SOURCE
)
ECC = (
    "(External) CUDA error(214), uncorrectable ECC error encountered. \n"
    "  [Hint: 'cudaErrorECCUncorrectable'. This indicates that an uncorrectable ECC error was detected during "
    "execution.]" + SOURCE
)
NCCL_SYSTEM = (
    "(External) NCCL error(2), unhandled system error (run with NCCL_DEBUG=INFO for details). \n"
    "  [Hint: 'ncclSystemError'. A call to the system failed.] (at /paddle/paddle/phi/core/distributed/"
    "nccl_comm_context.cc:49)\n"
)
NCCL_REMOTE = (
    "(External) NCCL error(6), remote process exited or there was a network error. \n"
    "  [Hint: 'ncclRemoteError'.] (at /paddle/paddle/phi/core/distributed/nccl_comm_context.cc:49)\n"
)
# paddle/phi/backends/dynload/dynamic_loader.cc; the format string is in 3.3.1's libphi_core.so.
CUDNN_MISSING = (
    "(PreconditionNotMet) The third-party dynamic library (libcudnn.so) that Paddle depends on is not configured "
    "correctly. (error code is libcudnn.so: cannot open shared object file: No such file or directory)\n"
    "  Suggestions:\n  1. Check if the third-party dynamic library (e.g. CUDA, CUDNN) is installed correctly and "
    "its version is matched with paddlepaddle you installed." + SOURCE
)


def test_paddle_3_3_1_names_the_error_kind_in_parentheses_and_the_source_after_it() -> None:
    """The message shape the classification reads, from Paddle's own exception translator."""
    with pytest.raises(RuntimeError) as raised:
        paddle.base.core.__unittest_throw_exception__()
    assert str(raised.value).startswith("(PermissionDenied) This is a test of exception (at ")
    assert device_fault(raised.value) is None  # not a device fault: left as it is


@pytest.mark.parametrize(
    ("exc", "permanent", "fix"),
    [
        (OSError(INSUFFICIENT_DRIVER), True, f"driver >= {DRIVER_FLOORS['12.6']}"),
        (OSError(NO_KERNEL_IMAGE), True, "--build-arg PADDLE_INDEX_URL=https://www.paddlepaddle.org.cn/packages/stable/cu129/"),
        (OSError(NO_DEVICE), True, "--gpus all"),
        (OSError("(External) CUDA error(46), CUDA-capable device(s) is/are busy or unavailable. \n  [Hint: "
                 "'cudaErrorDevicesUnavailable'.]" + SOURCE), True, "one worker on each"),
        (OSError("(External) Failed, cuda error /paddle/paddle/phi/core/distributed/nccl_comm_context.cc:61 "
                 "'CUDA-capable device(s) is/are busy or unavailable'"), True,
         "exclusive-process"),
        (OSError(NCCL_SYSTEM), True, "shm_size"),
        (RuntimeError(CUDNN_MISSING), True, "LD_LIBRARY_PATH"),
        (OSError(ECC), False, None),
        (OSError(NCCL_REMOTE), False, None),
        (OSError("(External) CUBLAS error(13). \n  [Hint: 'CUBLAS_STATUS_EXECUTION_FAILED'.]" + SOURCE), False, None),
        (OSError("(External) CUDNN error(6), CUDNN_STATUS_ARCH_MISMATCH. " + SOURCE), True, "cu129"),
    ],
)  # fmt: skip
def test_a_node_or_image_fault_names_its_fix_and_a_passing_fault_is_retryable(
    exc: BaseException, permanent: bool, fix: str | None
) -> None:
    fault = device_fault(exc)
    assert fault is not None
    assert (fault.error().exit_code == 2) is permanent
    assert "(at " not in fault.detail and "\n" not in fault.detail  # Paddle's first line, without its source
    if fix is not None:
        assert fix in str(fault.error())


@pytest.mark.parametrize(
    "exc",
    [OSError(28, "No space left on device"), OSError("Connection reset by peer"), RuntimeError("shape mismatch")],
)
def test_io_and_other_errors_are_not_device_faults(exc: BaseException) -> None:
    assert device_fault(exc) is None


def test_the_driver_floor_is_the_one_of_the_images_cuda() -> None:
    assert driver_floor("12.6") == "550.54.14"  # Paddle's install docs for its CUDA 12.6 wheels
    assert driver_floor() == "550.54.14"  # this CPU build has no CUDA: the GPU image's default build
    assert "12.4" in driver_floor("12.4")


def raising(message: str, kind: type[BaseException] = OSError):
    def fail(*args, **kwargs):
        raise kind(message)

    return fail


@pytest.fixture
def broken_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build of Paddle on a node whose driver is too old: asking for the device count fails."""
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", raising(INSUFFICIENT_DRIVER))


@pytest.mark.parametrize("device", ["gpu", "auto"])
def test_a_driver_too_old_exits_2_naming_the_driver_it_needs(write_config, broken_driver, device: str) -> None:
    """`auto` does not fall back to CPU: paddle.seed would raise the same CUDA error (it seeds every CUDA
    device of a CUDA build), and a GPU node training on its CPU is not what anyone asked for."""
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(device=device))])
    assert result.exit_code == 2, result.output
    assert "GPU fault: (External) CUDA error(35), CUDA driver version is insufficient" in result.output
    assert "install driver >= 550.54.14" in result.output
    assert result.exc_info[0] is SystemExit  # no traceback


def test_a_gpu_architecture_the_build_lacks_exits_2_at_load_naming_the_build_arg(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paddlenlp.transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", raising(NO_KERNEL_IMAGE))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config())])
    assert result.exit_code == 2, result.output  # not "could not load model", retried (75)
    assert "no kernel image is available" in result.output and "stable/cu129/" in result.output


@pytest.mark.parametrize(("message", "code"), [(ECC, 75), (NCCL_SYSTEM, 2), (NCCL_REMOTE, 75)])
def test_a_device_fault_in_a_training_step_exits_with_its_code(
    write_config, monkeypatch: pytest.MonkeyPatch, message: str, code: int
) -> None:
    monkeypatch.setattr(paddle.optimizer.AdamW, "step", raising(message))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(strategies=["lora"]))])
    assert result.exit_code == code, result.output
    assert "GPU fault" in result.output and "I/O error" not in result.output
    assert message.splitlines()[0].strip() in result.output


def test_a_missing_cuda_library_exits_2_naming_ld_library_path(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paddle.optimizer.AdamW, "step", raising(CUDNN_MISSING, RuntimeError))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(strategies=["lora"]))])
    assert result.exit_code == 2, result.output
    assert "libcudnn.so" in result.output and "LD_LIBRARY_PATH" in result.output


def test_predict_on_a_node_without_a_visible_gpu_exits_2(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from paddlenlp.transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", raising(NO_DEVICE))
    result = CliRunner().invoke(main, ["predict", "--model", str(tiny_model), "--device", "cpu", "a title"])
    assert result.exit_code == 2, result.output  # not "is not a model this job can load"
    assert "the container sees no GPU" in result.output


# ---------------------------------------------------------------- round 2: what a first cloud run would hit

# paddle/phi/backends/gpu/gpu_resources.cc (Paddle 3.1+), at the first GPU context: no CUDA code, no tag.
UNSUPPORTED_ARCH = "Unsupported GPU architecture"
# paddle/phi/core/distributed/nccl_tools.h: NCCL_CHECK quotes ncclGetErrorString, with no number.
QUOTED_NCCL = "(External) Failed, NCCL error /paddle/paddle/phi/core/distributed/nccl_comm_context.cc:49 '{}'\n" + (
    "  [Hint: Expected ...] (at /paddle/paddle/phi/core/distributed/nccl_comm_context.cc:49)\n"
)
# paddle/fluid/memory/allocation/allocator_facade / cuda_allocator.cc: PADDLE_THROW_BAD_ALLOC(ResourceExhausted)
GPU_OOM = (
    "(ResourceExhausted) \n\nOut of memory error on GPU 0. Cannot allocate 1.50GB memory on GPU 0, 14.20GB memory has "
    "been allocated and available memory is only 312.00MB.\n\nPlease check whether there is any other process using "
    "GPU 0.\n1. If yes, please stop them, or start PaddlePaddle on another GPU.\n2. If no, please decrease the batch "
    "size of your model.\n (at /paddle/paddle/phi/core/memory/allocation/cuda_allocator.cc:84)\n"
)
CUBLAS_ALLOC = (
    "(External) CUBLAS error(3). \n  [Hint: 'CUBLAS_STATUS_ALLOC_FAILED'.  Resource allocation failed inside the "
    "cuBLAS library. ] (at /paddle/paddle/phi/kernels/funcs/blas/blas_impl.cu.h:40)\n"
)
PTX_TOO_NEW = (
    "(External) CUDA error(222), the provided PTX was compiled with an unsupported toolchain. \n"
    "  [Hint: 'cudaErrorUnsupportedPtxVersion'.]" + SOURCE
)
FABRIC_MANAGER = (
    "(External) CUDA error(802), system not yet initialized. \n  [Hint: 'cudaErrorSystemNotReady'.]" + SOURCE
)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build that sees one GPU: the GPU path forced on this CPU build."""
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(paddle, "set_device", lambda name: None)


def test_an_architecture_the_wheel_lacks_exits_2_at_device_selection_before_anything_loads(
    write_config, one_gpu, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paddle 3.1+ raises it at the first tensor; the job makes one right after set_device."""
    from paddlenlp.transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(paddle, "ones", raising(UNSUPPORTED_ARCH, RuntimeError))
    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(device="gpu"))])
    assert result.exit_code == 2 and result.exc_info[0] is SystemExit, result.output
    assert "GPU fault: Unsupported GPU architecture; this Paddle build has no kernels for this GPU's architecture" in (
        result.output
    )
    assert "stable/cu129/" in result.output


def test_an_architecture_the_wheel_lacks_is_a_fault_at_load(write_config, monkeypatch: pytest.MonkeyPatch) -> None:
    from paddlenlp.transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", raising(UNSUPPORTED_ARCH, RuntimeError))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config())])
    assert result.exit_code == 2, result.output  # not "weights cannot be read, truncated or corrupt?"
    assert "Unsupported GPU architecture" in result.output and "cu129" in result.output
    assert "corrupt" not in result.output


def test_an_architecture_the_wheel_lacks_fails_the_doctors_device_check_with_the_fix(
    tmp_path: Path, one_gpu, monkeypatch: pytest.MonkeyPatch, write_config
) -> None:
    monkeypatch.setattr(paddle, "ones", raising(UNSUPPORTED_ARCH, RuntimeError))
    doctor = CliRunner().invoke(main, ["doctor", "--config", str(write_config()), "--device", "gpu", "--output-dir",
                                       str(tmp_path / "d")])  # fmt: skip
    assert "FAIL  devices: GPU fault: Unsupported GPU architecture; this Paddle build has no kernels" in doctor.output
    assert "report this" not in doctor.output


@pytest.mark.parametrize(
    ("quoted", "code"),
    [("unhandled system error (run with NCCL_DEBUG=INFO for details)", 2),
     ("internal error - please report this issue to the NCCL developers", 2),
     ("invalid argument (run with NCCL_DEBUG=WARN for details)", 2),
     ("invalid usage (run with NCCL_DEBUG=WARN for details)", 2),
     ("remote process exited or there was a network error", 75),
     ("unhandled cuda error (run with NCCL_DEBUG=INFO for details)", 75)],
    ids=["system", "internal", "invalid-argument", "invalid-usage", "remote", "cuda"],
)  # fmt: skip
def test_a_collective_fault_quoted_without_a_number_exits_by_what_it_says(
    write_config, monkeypatch: pytest.MonkeyPatch, quoted: str, code: int
) -> None:
    monkeypatch.setattr(paddle.optimizer.AdamW, "step", raising(QUOTED_NCCL.format(quoted)))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(strategies=["lora"]))])
    assert result.exit_code == code, result.output
    assert f"Failed, NCCL error /paddle/paddle/phi/core/distributed/nccl_comm_context.cc:49 '{quoted}'" in result.output
    assert ("shared memory" in result.output) == (code == 2)


def test_out_of_memory_outside_training_exits_2_keeping_paddles_line(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paddlenlp.transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", raising(GPU_OOM, MemoryError))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config())])
    assert result.exit_code == 2 and result.exc_info[0] is SystemExit, result.output
    assert "ran out of memory (Out of memory error on GPU 0. Cannot allocate 1.50GB memory on GPU 0" in result.output
    assert "another process may hold the device's memory" in result.output


def test_out_of_memory_in_a_step_keeps_paddles_line_and_names_the_batch_size(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(paddle.optimizer.AdamW, "step", raising(GPU_OOM, MemoryError))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(strategies=["lora"]))])
    assert result.exit_code == 2, result.output
    assert "[lora] training at batch size 16 ran out of memory (Out of memory error on GPU 0. Cannot allocate" in (
        result.output
    )
    assert "try --set lora_batch_size=8" in result.output


@pytest.mark.parametrize(
    ("message", "fragment"),
    [(CUBLAS_ALLOC, "another process may hold the device's memory"),
     (PTX_TOO_NEW, "too old to compile this image's PTX"),
     (FABRIC_MANAGER, "nvidia-fabricmanager is not running"),
     ("(External) CUDA error(2), out of memory. \n  [Hint: 'cudaErrorMemoryAllocation'.]" + SOURCE,
      "lower batch_size")],
    ids=["cublas-alloc", "ptx-222", "fabric-802", "cuda-2"],
)  # fmt: skip
def test_faults_permanent_for_the_node_exit_2_with_their_fix(
    write_config, monkeypatch: pytest.MonkeyPatch, message: str, fragment: str
) -> None:
    monkeypatch.setattr(paddle.optimizer.AdamW, "step", raising(message))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(strategies=["lora"]))])
    assert result.exit_code == 2, result.output  # was 75: retried for ever on the same node
    assert fragment in result.output
