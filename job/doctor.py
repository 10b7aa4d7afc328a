"""`python -m job doctor`: the self-check a user runs on a new node or in the image, one line per check,
PASS or FAIL with the fix. It runs each kind of kernel the job uses (matmul, softmax, layer norm,
embedding gradient, PiSSA's SVD) alone in every precision the device supports, then builds a tiny random
ERNIE in memory (no download) and takes one real training step of every strategy in each of them,
through the job's own step.

GPU branches (driver, devices, mixed precision steps, the NCCL all-reduce) run only where there is a
GPU; on CPU the doctor reports the CPU facts the job's speed depends on."""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.config.schema import JobConfig
from job.errors import RetryableError, UserError
from job.runtime.cpu import AMD_VENDORS, cpu_vendor
from job.runtime.device import (
    BF16_CAPABILITY,
    FP16_CAPABILITY,
    DeviceChoice,
    gpu_available,
    resolve_precision,
    select_device,
)
from job.runtime.device_faults import ARCH_FIX, cuda_version, device_fault, driver_floor


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str
    fix: str = ""
    warning: bool = False  # passed, with something to know: WARN and its advice

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and not self.passed else ""
        advice = f" -> {self.fix}" if self.fix and self.warning else ""
        status = "FAIL" if not self.passed else "WARN" if self.warning else "PASS"
        return f"{status}  {self.name}: {self.detail}{fix}{advice}"


def paddle_build() -> Check:
    import paddle

    if not paddle.is_compiled_with_cuda():
        return Check("paddle build", True, f"paddlepaddle {paddle.__version__}, CPU only (no CUDA)")
    return Check("paddle build", True, f"paddlepaddle-gpu {paddle.__version__}, CUDA {paddle.version.cuda()}, "
                 f"cuDNN {paddle.version.cudnn()}")  # fmt: skip


def driver_version(proc_file: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The NVIDIA kernel module's version (the host's driver, visible in every container), or None."""
    try:
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", proc_file.read_text(encoding="utf-8"))
    except OSError:
        return None
    return match.group(1) if match else None


def driver_check(version: str | None) -> Check:
    """The host's driver against the floor of this Paddle's CUDA build."""
    floor = driver_floor()
    if version is None:
        return Check("driver", False, "no NVIDIA kernel module (/proc/driver/nvidia/version)",
                     "install the NVIDIA driver on the host and run with the NVIDIA container toolkit")  # fmt: skip
    if not re.fullmatch(r"\d+(?:\.\d+)+", floor):  # a CUDA build without a floor in DRIVER_FLOORS
        return Check("driver", True, f"{version} (this build needs {floor})")
    if _numbers(version) < _numbers(floor):
        cuda = cuda_version()
        compatible = MINOR_COMPATIBLE.get(cuda.split(".")[0])
        detail = (f"{version}, older than {floor}, the driver of CUDA {cuda}"
                  + (f"; CUDA {cuda.split('.')[0]}'s minor-version compatibility runs this build from "
                     f"{compatible} as long as no newer PTX must be compiled" if compatible else ""))  # fmt: skip
        return Check("driver", True, detail, f"if a step fails with CUDA error 222 or 35, install driver >= {floor}",
                     warning=True)  # fmt: skip
    return Check("driver", True, f"{version} (this build needs >= {floor})")


# The oldest driver of each CUDA major release that runs any of its minor releases' binaries (NVIDIA's
# CUDA Compatibility guide, "minor version compatibility"): GKE and Cloud Batch images with R535 run a
# cu126 build, unless a kernel needs PTX newer than the driver compiles (CUDA error 222).
MINOR_COMPATIBLE = {"11": "450.80.02", "12": "525.60.13"}


def _numbers(version: str) -> list[int]:
    """A driver version compared part by part as numbers: 550.127.05 is newer than 550.54.14."""
    return [int(part) for part in version.split(".")]


def device_checks(requested: str) -> tuple[list[Check], DeviceChoice | None]:
    """The device the job would pick, with its facts; None when there is none to train on."""
    checks: list[Check] = []
    import paddle

    if paddle.is_compiled_with_cuda():
        checks.append(driver_check(driver_version()))
    check = gpu_available()
    if check.fault is not None:
        checks.append(Check("devices", False, check.why, check.fault.fix or "retry on a healthy node"))
        return checks, None
    if requested == "gpu" and not check.usable:
        fix = "use the GPU image (make build-gpu) with --gpus all" if "no CUDA" in check.why else "run with --gpus all"
        checks.append(Check("devices", False, check.why, fix))
        return checks, None
    try:
        chosen = select_device(requested)
    except (UserError, RetryableError) as exc:
        checks.append(Check("devices", False, str(exc)))
        return checks, None
    checks.append(Check("devices", True, f"{chosen.description} ({chosen.reason})"))
    if chosen.name == "gpu":
        capability = chosen.capability or (0, 0)
        bf16 = "yes" if capability >= BF16_CAPABILITY else "no"
        fp16 = "yes" if capability >= FP16_CAPABILITY else "no"
        auto = resolve_precision("auto", chosen)
        detail = f"{capability[0]}.{capability[1]}: bf16 {bf16}, fp16 tensor cores {fp16}, precision auto = {auto}"
        checks.append(Check("compute capability", True, detail))
    return checks, chosen


def precisions_to_try(device: DeviceChoice) -> list[str]:
    """fp32 everywhere, and on a GPU each mixed precision it supports."""
    if device.name != "gpu":
        return ["fp32"]
    capability = device.capability or (0, 0)
    return (
        ["fp32"]
        + (["fp16"] if capability >= FP16_CAPABILITY else [])
        + (["bf16"] if capability >= BF16_CAPABILITY else [])
    )


def tiny_model(seed: int = 0) -> Any:
    """A 2-layer ERNIE with random weights, built in memory (no download)."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    paddle.seed(seed)
    config = ErnieConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, num_classes=3)  # fmt: skip
    return ErnieForSequenceClassification(config)


def step_checks(device: DeviceChoice) -> Iterator[Check]:
    """One real training step of every strategy in each precision, through the job's own step."""
    import numpy as np

    from job.config.plan import plan_runs
    from job.training.loop import build_optimizer, loss_scaler, train_step
    from job.training.model import LoadedModel
    from job.training.strategies import STRATEGY_NAMES

    runs = {
        run.strategy.name: run for run in plan_runs(JobConfig(lora_r=4, lora_alpha=8, strategies=list(STRATEGY_NAMES)))
    }
    generator = np.random.default_rng(0)
    batch = {
        "input_ids": generator.integers(1, 64, size=(4, 16)).astype("int64"),
        "token_type_ids": np.zeros((4, 16), dtype="int64"),
        "labels": generator.integers(0, 3, size=(4,)).astype("int64"),
    }
    for precision in precisions_to_try(device):
        for name, run in runs.items():
            what = f"{name} step ({precision})"
            try:
                model = tiny_model()
                head = [n for n, _ in model.named_parameters() if not n.startswith("ernie.")]
                model = run.strategy.prepare(LoadedModel(model, head, reinitialised=[]), run)
                model.train()
                optimizer, schedule = build_optimizer(model, run.settings, 10)
                loss = float(train_step(model, batch, optimizer, schedule, precision, loss_scaler(precision)))
            except (OSError, RuntimeError, ValueError) as exc:
                fault = device_fault(exc)
                fix = (fault.fix or "retry on a healthy node") if fault else "report this with the message"
                yield Check(what, False, (fault.detail if fault else str(exc).strip().splitlines()[0][:300]), fix)
                continue
            if math.isfinite(loss):
                yield Check(what, True, f"loss {loss:.4f}")
            else:
                yield Check(
                    what,
                    False,
                    f"loss {loss}",
                    "the device computes wrong numbers: try precision fp32, or another node",
                )


def _matmul(dtype: str) -> None:
    import paddle

    a = paddle.ones([64, 64], dtype="float32").astype(dtype)
    value = float(paddle.matmul(a, a).astype("float32")[0, 0])
    assert value == 64.0, f"matmul gave {value}, expected 64"


def _softmax(dtype: str) -> None:
    import paddle

    x = paddle.zeros([4, 8], dtype="float32").astype(dtype)
    value = float(paddle.nn.functional.softmax(x, axis=-1).astype("float32").sum())
    assert abs(value - 4.0) < 1e-2, f"softmax rows summed to {value / 4}, expected 1"


def _layer_norm(dtype: str) -> None:
    import paddle

    x = paddle.arange(32, dtype="float32").reshape([4, 8]).astype(dtype)
    out = paddle.nn.functional.layer_norm(x, 8).astype("float32")
    assert abs(float(out.mean())) < 1e-2, f"layer norm mean {float(out.mean())}, expected 0"


def _embedding_gradient(dtype: str) -> None:
    import paddle

    table = paddle.create_parameter([16, 8], "float32")
    ids = paddle.to_tensor([[1, 1, 2]], dtype="int64")
    paddle.nn.functional.embedding(ids, table).astype(dtype).astype("float32").sum().backward()
    grad = table.grad.numpy()
    assert float(grad[1].sum()) == 16.0 and float(grad[0].sum()) == 0.0, "embedding gradient did not accumulate"


def _svd(dtype: str) -> None:
    import paddle

    singular = paddle.linalg.svd(paddle.eye(8, dtype="float32") * 2.0, full_matrices=False)[1]
    assert abs(float(singular.sum()) - 16.0) < 1e-3, "SVD of 2I did not give 2s"


# Each kind of kernel the job's steps use, run alone so a failure names its kernel (a GPU architecture the
# wheel has no kernels for fails at the first one it lacks). The SVD is PiSSA's, in fp32 only.
KERNELS = {"matmul": _matmul, "softmax": _softmax, "layer norm": _layer_norm,
           "embedding gradient": _embedding_gradient, "SVD": _svd}  # fmt: skip
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def kernel_checks(device: DeviceChoice) -> Iterator[Check]:
    """Every kernel kind in each precision the device supports: one PASS line per precision naming them,
    a FAIL line per kernel that fails, with the fault's fix or the architectures the wheel was built for."""
    import paddle

    archs = ", ".join(f"sm_{arch}" for arch in (paddle.version.cuda_archs() or [])) or "none listed"
    for precision in precisions_to_try(device):
        passed = []
        for name, kernel in KERNELS.items():
            if name == "SVD" and precision != "fp32":
                continue
            try:
                kernel(DTYPES[precision])
            except (OSError, RuntimeError, ValueError, AssertionError) as exc:
                fault = device_fault(exc) if not isinstance(exc, AssertionError) else None
                detail = fault.detail if fault else str(exc).strip().splitlines()[0][:300]
                capability = ".".join(map(str, device.capability)) if device.capability else "?"
                fix = fault.fix if fault and fault.fix else (
                    f"if only {precision} fails, use precision: fp32; else {ARCH_FIX}")  # fmt: skip
                where = f"; the wheel's kernels: {archs}, this GPU: compute capability {capability}"
                yield Check(f"kernel {name} ({precision})", False, detail + where, fix)
                continue
            passed.append(name)
        if passed:
            yield Check(f"kernels ({precision})", True, ", ".join(passed))


# One process per GPU: each all-reduces a tensor of ones; every rank must then hold the world size.
ALL_REDUCE = """
import paddle, paddle.distributed as dist
dist.init_parallel_env()
ones = paddle.ones([1024])
dist.all_reduce(ones)
expected = dist.get_world_size()
assert float(ones.min()) == float(ones.max()) == expected, (float(ones.min()), expected)
print("all-reduce ok", expected)
"""


COLLECTIVE_FIX = (
    "rerun with NCCL_DEBUG=INFO; give the container shared memory (compose: shm_size; Kubernetes: /dev/shm)"
)


def all_reduce_check(processes: int, gpus: bool, timeout: float = 300) -> Check:
    """An all-reduce across `processes` ranks under paddle.distributed.launch (NCCL on GPUs, gloo on CPU)."""
    with tempfile.TemporaryDirectory(prefix="doctor-") as folder:
        script = Path(folder) / "all_reduce.py"
        script.write_text(ALL_REDUCE, encoding="utf-8")
        devices = (
            ["--gpus", ",".join(str(i) for i in range(processes))] if gpus else ["--nproc_per_node", str(processes)]
        )
        command = [
            sys.executable,
            "-m",
            "paddle.distributed.launch",
            *devices,
            "--log_dir",
            str(Path(folder) / "logs"),
            str(script),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return Check("all-reduce", False, f"{processes} ranks did not finish in {timeout:.0f} s", COLLECTIVE_FIX)
        logs = "".join(
            p.read_text(encoding="utf-8", errors="replace") for p in sorted((Path(folder) / "logs").glob("workerlog.*"))
        )
    if result.returncode == 0 and logs.count("all-reduce ok") == processes:
        return Check("all-reduce", True, f"{processes} ranks ({'NCCL' if gpus else 'gloo'}) agree")
    text = logs + result.stderr
    fault = device_fault(OSError(text)) if "error(" in text else None
    detail = fault.detail if fault else (text.strip().splitlines() or ["no output"])[-1][:300]
    return Check("all-reduce", False, detail, fault.fix if fault and fault.fix else COLLECTIVE_FIX)


@contextlib.contextmanager
def isolated_cache() -> Iterator[Check]:
    """The model cache's check, made before PaddleNLP is imported; while the doctor runs, a cache that
    does not exist yet or cannot be used is replaced by a scratch folder, so the import neither fails nor
    leaves folders behind."""
    from job.data.cache import FIX, cache_home, cache_problem

    home, problem = cache_home(), cache_problem()
    if problem is None and home.is_dir():
        writable = os.access(home, os.W_OK | os.X_OK)
        yield Check("model cache", True, f"{home} ($PPNLP_HOME) is writable" if writable else
                    f"{home} ($PPNLP_HOME) is read-only and holds PaddleNLP's folders: runs read what was "
                    "prefetched into it and download nothing")  # fmt: skip
        return
    if problem is None:
        check = Check("model cache", True, f"{home} ($PPNLP_HOME) does not exist yet; the first run creates it")
    else:
        check = Check("model cache", False, problem, FIX)
    saved = os.environ.get("PPNLP_HOME")
    with tempfile.TemporaryDirectory(prefix="job-doctor-cache-") as scratch:
        os.environ["PPNLP_HOME"] = scratch
        try:
            yield check
        finally:
            if saved is None:
                os.environ.pop("PPNLP_HOME", None)
            else:
                os.environ["PPNLP_HOME"] = saved


def writable_checks(config: JobConfig, cache_check: Check) -> Iterator[Check]:
    from job.output.storage import open_output

    output = open_output(config.output_dir)
    try:
        created = output.check_writable()
    except OSError as exc:
        yield Check("output_dir", False, f"{output.where()}: {exc.strerror or exc}",
                    "mount the folder read-write and owned by the job's user, or set output_dir")  # fmt: skip
    except (UserError, RetryableError) as exc:
        yield Check("output_dir", False, str(exc))
    else:
        for folder in reversed(created):  # the doctor leaves nothing behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        yield Check("output_dir", True, f"{output.where()} is writable")
    yield cache_check


PROBE_SECONDS = 5.0  # how long the doctor waits for the model store (or PPNLP_ENDPOINT) to answer


def reachable(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """None when `url` answers (a HEAD, redirects followed), else why not, in a few words."""
    import requests

    try:
        response = requests.head(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        return type(exc).__name__
    return None if response.status_code < 400 else f"HTTP {response.status_code}"


def inputs_checks(config: JobConfig) -> Iterator[Check]:
    """The config's model and data: in the cache (or local), or reachable in a few seconds, so that `job
    run` will not stop at its first download. FAIL with the offline options when neither holds."""
    from job.data.download import OFFLINE, builtin_model_files, clue_archive, missing_members, use_mirror
    from job.data.sources import peek_clue_folder, peek_own_folder
    from job.data.tasks import CLUE_TASKS, OWN

    use_mirror()
    model = config.model_name
    if Path(model).expanduser().is_dir():
        present = (Path(model).expanduser() / "config.json").is_file()
        yield Check("model", present, f"local folder {model}" + ("" if present else " has no config.json"),
                    "give the folder a saved model (config.json, weights, tokenizer)")  # fmt: skip
    else:
        files = builtin_model_files(model)
        if files and all(file.path.is_file() for file in files):
            yield Check("model", True, f"{model} is in the cache ({files[0].path.parent})")
        elif files:
            problem = reachable(files[0].url)
            detail = f"{model} is not in the cache ($PPNLP_HOME)"
            if problem is None:
                yield Check("model", True, f"{detail}; the store answers, the first run downloads it")
            else:
                yield Check("model", False, f"{detail}, and {files[0].url} does not answer ({problem})", OFFLINE)
        else:
            yield Check("model", True, f"{model}: PaddleNLP resolves it on the first run (not one the doctor knows)")
    if config.data_dir:
        folder = Path(config.data_dir)
        try:
            if config.dataset == OWN:
                lines = peek_own_folder(folder, config.data_spec())
            else:
                lines = peek_clue_folder(folder, CLUE_TASKS[config.dataset])
        except UserError as exc:
            fix = (
                "fix the file, or the column keys (docs/own-data.md)"
                if config.dataset == OWN
                else (
                    f"give data_dir the task's files in CLUE's format, or leave it unset to download {config.dataset}"
                )
            )
            yield Check("data", False, str(exc), fix)
        else:
            ok = folder.is_dir()
            yield Check("data", ok, f"{folder}" + (f": {'; '.join(lines)}" if lines else "") if ok else
                        f"data_dir {folder} is not a folder", "set data_dir to the folder of your files")  # fmt: skip
    elif config.dataset in CLUE_TASKS:
        archive = clue_archive(config.dataset)
        if not missing_members(archive):
            yield Check("data", True, f"{config.dataset} is in the cache ({archive.folder})")
        else:
            problem = reachable(archive.url)
            detail = f"{config.dataset} is not in the cache ($PPNLP_HOME)"
            if problem is None:
                yield Check("data", True, f"{detail}; the store answers, the first run downloads it")
            else:
                yield Check("data", False, f"{detail}, and {archive.url} does not answer ({problem})", OFFLINE)


def cpu_checks() -> Iterator[Check]:
    from job.bench import matmul_peak_gflops

    vendor = cpu_vendor() or "unknown vendor"
    mkl = os.environ.get("MKL_DEBUG_CPU_TYPE")
    mkl_note = f"MKL_DEBUG_CPU_TYPE={mkl}" if mkl else "MKL picks its own kernels"
    if vendor in AMD_VENDORS and mkl != "5":
        yield Check("MKL", False, f"{vendor} without MKL_DEBUG_CPU_TYPE=5 (MKL's slow path on AMD, about 2x slower)",
                    "unset MKL_DEBUG_CPU_TYPE and let the job set it, or set it to 5")  # fmt: skip
    else:
        yield Check("MKL", True, f"{vendor}, {mkl_note}")
    yield Check("threads", True, f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    yield Check(
        "matmul peak", True, f"{matmul_peak_gflops(seconds=1.0):.0f} GFLOP/s fp32 (job bench measures it longer)"
    )


def run_checks(config: JobConfig, cache_check: Check) -> Iterator[Check]:
    """Every check, in order; each yielded as soon as it is known. `cache_check` is the model cache's,
    made before PaddleNLP was imported (isolated_cache)."""
    yield paddle_build()
    checks, device = device_checks(config.device)
    yield from checks
    if device is not None:
        yield from kernel_checks(device)
        yield from step_checks(device)
        if device.name == "gpu":
            import paddle

            count = paddle.device.cuda.device_count()
            if count > 1:
                yield all_reduce_check(count, gpus=True)
        else:
            yield from cpu_checks()
    yield from writable_checks(config, cache_check)
    yield from inputs_checks(config)
