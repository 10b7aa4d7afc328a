"""`precision`: fp32, bf16, fp16 or auto. Mixed precision runs on GPUs only (Paddle's CPU autocast
computes in fp32), so here: auto resolves to fp32 on CPU and is recorded; bf16/fp16 on CPU exit 2; and
the premise (Paddle computes fp32 on CPU under autocast) is checked. The bf16/fp16 training path itself
is verified only on a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.errors import UserError
from job.runtime.device import DeviceChoice, resolve_precision
from tests.fixtures import run_tiny

CPU = DeviceChoice("cpu", "cpu (2 threads)", "requested")


def test_auto_is_fp32_on_cpu_and_fp32_stays_fp32() -> None:
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")],
)
def test_auto_on_a_gpu_is_bf16_from_ampere_fp16_on_volta_and_turing_and_fp32_below(
    capability: tuple[int, int], expected: str
) -> None:
    gpu = DeviceChoice("gpu", f"gpu:0 (compute capability {capability})", "requested", capability)
    assert resolve_precision("auto", gpu) == expected
    assert resolve_precision("fp16", gpu) == "fp16" and resolve_precision("fp32", gpu) == "fp32"


def test_bf16_on_a_gpu_before_ampere_exits_2_naming_what_it_needs() -> None:
    t4 = DeviceChoice("gpu", "gpu:0 (Tesla T4, compute capability 7.5)", "requested", (7, 5))
    with pytest.raises(UserError, match=r"Tesla T4.*has no bf16 support.*compute capability 8\.0"):
        resolve_precision("bf16", t4)


def test_fp16_training_gets_the_loss_scaler_and_the_others_do_not() -> None:
    from job.training.loop import loss_scaler

    assert loss_scaler("fp16") is not None
    assert loss_scaler("bf16") is None and loss_scaler("fp32") is None


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_exits_2_naming_the_key(write_config, precision: str) -> None:
    with pytest.raises(UserError, match=f"'precision': {precision} needs a GPU"):
        resolve_precision(precision, CPU)
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(precision=precision))])
    assert result.exit_code == 2 and f"config key 'precision': {precision} needs a GPU" in result.output
    assert "Traceback" not in result.output


def test_an_unknown_precision_is_refused_before_anything_runs(write_config, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(precision="fp8"))])
    assert result.exit_code == 2 and "'precision'" in result.output and "'bf16'" in result.output
    assert not (tmp_path / "out").exists()


def test_the_resolved_precision_is_recorded_and_reported(tiny_model: Path, tnews_dir: Path, tmp_path: Path) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, strategies=["lora"], max_train_samples=32, max_eval_samples=16)
    combined = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert combined["run"]["config"]["precision"] == "auto"
    assert [run["precision"] for run in combined["runs"]] == ["fp32"]
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "training precision fp32, evaluation fp32" in report


def test_paddle_on_cpu_computes_in_fp32_under_autocast_which_is_why_cpu_refuses_mixed_precision() -> None:
    """The premise of the refusal, measured: a Linear under bf16 autocast returns float32 on CPU, and
    the fp16 loss scaler switches itself off there. If a Paddle upgrade changes this, revisit
    resolve_precision (and this test's name)."""
    import paddle

    paddle.set_device("cpu")
    layer = paddle.nn.Linear(8, 4)
    with paddle.amp.auto_cast(enable=True, dtype="bfloat16", level="O1"):
        assert layer(paddle.ones([2, 8])).dtype == paddle.float32
    assert not paddle.amp.GradScaler(init_loss_scaling=2.0**15).is_enable()


def test_eval_batch_size_auto_is_16_on_cpu_and_128_on_a_gpu_and_a_number_stays() -> None:
    from job.runtime.device import resolve_eval_batch_size

    gpu = DeviceChoice("gpu", "gpu:0 (NVIDIA L4, compute capability 8.9)", "requested", (8, 9))
    assert resolve_eval_batch_size("auto", CPU) == 16 and resolve_eval_batch_size("auto", gpu) == 128
    assert resolve_eval_batch_size(48, CPU) == resolve_eval_batch_size(48, gpu) == 48


def test_the_resolved_eval_batch_size_is_recorded_per_run_and_reported(
    tiny_model: Path, tnews_dir: Path, tmp_path: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, strategies=["lora"], max_train_samples=32, max_eval_samples=16,
                   eval_batch_size="auto")  # fmt: skip
    combined = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert combined["run"]["config"]["eval_batch_size"] == "auto"
    assert [run["eval_batch_size"] for run in combined["runs"]] == [16]
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "evaluation fp32 in batches of 16" in report
    reference = CliRunner().invoke(main, ["config-reference"]).output
    assert "eval_batch_size" in reference and "128 on a GPU" in reference


@pytest.mark.parametrize(
    ("capability", "switch", "expected"),
    [((8, 0), True, True), ((9, 0), True, True), ((7, 5), True, False), ((8, 0), False, False)],
)
def test_fp32_on_ampere_and_newer_is_recorded_and_reported_as_tf32_while_cublas_uses_it(
    monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int], switch: bool, expected: bool
) -> None:
    """Paddle turns cuBLAS's TF32 on by default on a CUDA build (its own test_tf32_cublas asserts it); the CPU
    wheel here answers False, so the switch is Paddle's own function answering as a CUDA build would."""
    from paddle.base import core

    from job.results.report import render_report
    from job.results.verdict import combine
    from job.runtime.device import tf32_matmuls
    from tests.records import records, result

    monkeypatch.setattr(core, "get_cublas_switch", lambda: switch)
    gpu = DeviceChoice("gpu", "gpu:0", "requested", capability)
    assert tf32_matmuls(gpu) is expected and tf32_matmuls(CPU) is False
    labels = [i % 15 for i in range(200)]
    runs = [result(name, lr=5e-4, seed=1, dev_right=100, test_right=100, labels=labels).model_copy(
        update={"tf32": tf32_matmuls(gpu)}) for name in ("lora", "full_finetune")]  # fmt: skip
    report = render_report(combine(records(runs, labels)))
    assert ("training precision fp32 (matmuls in TF32)" in report) is expected
    from job.results.report import protocol_departures

    departures = protocol_departures(records(runs, labels)[0].run.config, runs[1:])
    assert ("training precision tf32, not fp32" in departures) is expected


@pytest.mark.parametrize(
    ("visible", "named"),
    [("3", "gpu:0 = node GPU 3 ("), ("GPU-8f2e", "gpu:0 = node GPU GPU-8f2e ("), (None, "gpu:0 (")],
)
def test_a_gpu_device_names_the_nodes_gpu_behind_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, named: str
) -> None:
    """The GPU branch of select_device forced (a usable GPU answered, Paddle's device calls answering as on
    an A100): a worker pinned by CUDA_VISIBLE_DEVICES=3 recorded `gpu:0` like every other worker."""
    import paddle

    import job.runtime.device as device
    from job.runtime.device import GpuCheck, select_device

    monkeypatch.setattr(device, "gpu_available", lambda: GpuCheck(True, "1 GPU(s) visible"))
    monkeypatch.setattr(device, "build_context", lambda: None)
    monkeypatch.setattr(paddle, "set_device", lambda name: None)
    monkeypatch.setattr(paddle.device.cuda, "get_device_name", lambda index: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(paddle.device.cuda, "get_device_capability", lambda index: (8, 0))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.delenv("FLAGS_selected_gpus", raising=False)
    chosen = select_device("auto")
    assert chosen.description == f"{named}NVIDIA A100-SXM4-80GB, compute capability 8.0)"


def test_auto_on_a_cpu_build_where_nvidia_smi_lists_gpus_warns_loudly_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU node running the CPU venv: the only sign was `falling back to CPU`."""
    import job.runtime.device as device
    from job.runtime.device import select_device

    monkeypatch.setattr(
        device, "nvidia_smi_list", lambda: "GPU 0: NVIDIA L4 (UUID: GPU-1)\nGPU 1: NVIDIA L4 (UUID: GPU-2)\n"
    )
    chosen = select_device("auto")
    assert chosen.name == "cpu" and chosen.reason.startswith(
        "auto: this Paddle build has no CUDA support, falling back"
    )
    assert ("WARNING: nvidia-smi lists 2 GPU(s), but this is Paddle's CPU build: install the GPU build (`make "
            "venv-gpu`, then VENV=.venv-gpu) or run the GPU image (`make run-gpu`)") in chosen.reason  # fmt: skip
    monkeypatch.setattr(device, "nvidia_smi_list", lambda: "")
    assert "WARNING" not in select_device("auto").reason and "WARNING" not in select_device("cpu").reason


def test_make_venv_gpu_installs_paddles_gpu_build_of_the_pinned_version_from_the_images_index() -> None:
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    dry = subprocess.run(["make", "-n", "venv-gpu", "GPU_VENV=/nonexistent/venv-gpu"], cwd=root, capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    image_index = re.search(r"^ARG PADDLE_INDEX_URL=(.+)$", (root / "Dockerfile.gpu").read_text(), re.M)[1]
    assert f"--extra-index-url {image_index}" in dry and '"paddlepaddle-gpu==$(sed -n ' in dry
    assert "-r /nonexistent/venv-gpu/requirements-no-paddle.txt -r requirements-dev.txt -c constraints.txt" in dry
