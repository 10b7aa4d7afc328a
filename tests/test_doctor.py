"""`job doctor`: one PASS/FAIL line per check, the fix beside every failure, exit 0 only when all pass.
The CPU branches run here for real (a training step of each strategy, the writable folders, the CPU
facts, an all-reduce across two gloo ranks); the GPU branches are fed Paddle's own failures."""

from __future__ import annotations

from pathlib import Path

import paddle
import pytest
from click.testing import CliRunner

import job.training.loop
from job.cli import main
from job.doctor import all_reduce_check, driver_check, driver_version, precisions_to_try
from job.runtime.device import DeviceChoice
from job.training.strategies import STRATEGY_NAMES
from tests.fixtures import ROOT
from tests.test_device_faults import INSUFFICIENT_DRIVER, raising


def doctor(tmp_path: Path, *args: str, config: Path | None = None):
    """`job doctor` on a config whose model and data are local (the tiny ones), so no check needs a network."""
    chosen = ["--config", str(config)] if config is not None else []
    return CliRunner().invoke(main, ["doctor", *chosen, "--output-dir", str(tmp_path / "out"), *args])


def test_on_this_cpu_every_check_passes_and_nothing_is_left_behind(tmp_path: Path, write_config) -> None:
    result = doctor(tmp_path, config=write_config())
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(line.startswith("PASS  ") for line in lines[:-1]) and lines[-1] == "all checks passed"
    names = [line.split(":")[0][6:] for line in lines[:-1]]
    steps = [f"{name} step (fp32)" for name in STRATEGY_NAMES]  # every strategy of the registry
    assert names == ["paddle build", "devices", "kernels (fp32)", *steps, "MKL", "threads", "matmul peak",
                     "output_dir", "model cache", "model", "data"]  # fmt: skip
    assert "GFLOP/s" in lines[names.index("matmul peak")]
    page = (ROOT / "docs" / "devices.md").read_text(encoding="utf-8")
    sample = next(block for block in page.split("```") if block.strip().startswith("PASS  paddle build"))
    shown = [line.split(":")[0][6:] for line in sample.strip().splitlines()[:-1]]
    assert shown == names  # docs/devices.md shows every check, in the doctor's order
    assert not (tmp_path / "out").exists()  # the probe's folder is removed again


def test_an_output_dir_that_cannot_be_written_fails_with_the_fix(tmp_path: Path, write_config) -> None:
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["doctor", "--config", str(write_config()), "--output-dir",
                                       str(tmp_path / "file" / "out")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "FAIL  output_dir: " in result.output and "-> fix: mount the folder read-write" in result.output
    assert result.output.splitlines()[-1] == "1 check(s) failed"


def test_a_model_cache_that_cannot_be_written_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config
) -> None:
    (tmp_path / "cache").write_text("not a folder")
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path / "cache"))
    result = doctor(tmp_path, config=write_config())
    assert result.exit_code == 2 and "FAIL  model cache: PPNLP_HOME " in result.output
    assert "is a file, not a folder -> fix: point PPNLP_HOME at a writable folder" in result.output


def test_a_step_with_a_non_finite_loss_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config) -> None:
    real = job.training.loop.train_step
    monkeypatch.setattr(job.training.loop, "train_step", lambda *a, **k: real(*a, **k) * float("nan"))
    result = doctor(tmp_path, config=write_config())
    assert result.exit_code == 2
    assert "FAIL  lora step (fp32): loss nan -> fix: " in result.output
    assert "FAIL  full_finetune step (fp32): loss nan" in result.output


def test_a_driver_too_old_fails_the_device_check_with_the_driver_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config
) -> None:
    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.version, "cuda", lambda: "12.6")
    monkeypatch.setattr(paddle.version, "cudnn", lambda: "9.5.1")
    monkeypatch.setattr(paddle.device.cuda, "device_count", raising(INSUFFICIENT_DRIVER))
    result = doctor(tmp_path, "--device", "gpu", config=write_config())
    assert result.exit_code == 2, result.output
    assert "PASS  paddle build: paddlepaddle-gpu 3.3.1, CUDA 12.6, cuDNN 9.5.1" in result.output
    assert "FAIL  devices: the GPU cannot be used ((External) CUDA error(35)" in result.output
    assert "-> fix: the NVIDIA driver on this node is older than this image's CUDA 12.6 runtime needs: install " \
           "driver >= 550.54.14" in result.output  # fmt: skip
    assert "step (" not in result.output  # no device: no steps tried
    assert "PASS  output_dir" in result.output  # the other checks still run


def test_the_driver_is_read_from_the_kernel_module_and_checked_against_the_builds_floor(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
                    "GCC version:  gcc version 12.2.0\n")  # fmt: skip
    assert driver_version(proc) == "535.183.01"
    assert driver_version(tmp_path / "missing") is None
    old = driver_check("535.183.01")  # R535 of GKE and Cloud Batch images: runs a cu126 build, a WARN
    assert (
        old.passed
        and old.warning
        and old.line()
        == (
            "WARN  driver: 535.183.01, older than 550.54.14, the driver of CUDA 12.6; CUDA 12's minor-version "
            "compatibility runs this build from 525.60.13 as long as no newer PTX must be compiled -> if a step fails "
            "with CUDA error 222 or 35, install driver >= 550.54.14"
        )
    )
    assert driver_check("550.54.14").line() == "PASS  driver: 550.54.14 (this build needs >= 550.54.14)"
    assert not driver_check("570.86.10").warning
    # Compared part by part as numbers, not as text: parts of other widths than the floor's.
    assert not driver_check("550.127.05").warning  # as text "550.127.05" < "550.54.14"
    assert driver_check("550.9.1").warning  # as text "550.9.1" > "550.54.14"
    assert driver_check("99.99.99").warning and not driver_check("1000.0.0").warning
    assert not driver_check(None).passed  # no kernel module: no GPU to probe


def test_a_cuda_build_without_a_known_floor_passes_the_driver_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paddle.version, "cuda", lambda: "12.4")
    check = driver_check("550.54.14")
    assert check.passed and "release notes" in check.detail


@pytest.mark.parametrize(
    ("capability", "expected"), [((9, 0), ["fp32", "fp16", "bf16"]), ((7, 5), ["fp32", "fp16"]), ((6, 1), ["fp32"])]
)
def test_steps_are_tried_in_every_precision_the_gpu_supports(capability: tuple[int, int], expected: list[str]) -> None:
    assert precisions_to_try(DeviceChoice("gpu", "gpu:0", "requested", capability)) == expected
    assert precisions_to_try(DeviceChoice("cpu", "cpu", "requested")) == ["fp32"]


@pytest.mark.slow
def test_an_all_reduce_across_two_ranks_agrees_and_a_hung_one_fails_with_the_fix() -> None:
    check = all_reduce_check(2, gpus=False)
    assert check.passed, check.line()
    assert check.detail == "2 ranks (gloo) agree"
    hung = all_reduce_check(2, gpus=False, timeout=0.5)
    assert not hung.passed and "NCCL_DEBUG=INFO" in hung.fix


def test_a_model_and_data_neither_cached_nor_reachable_fail_with_the_offline_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config
) -> None:
    """An empty cache and a store that does not answer (PPNLP_ENDPOINT at a closed port on 127.0.0.1): the
    doctor says `job run` would stop at its first download, before it does."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("PPNLP_ENDPOINT", f"http://127.0.0.1:{port}")
    from tests.fixtures import original_paddlenlp_urls

    with original_paddlenlp_urls():
        result = doctor(tmp_path, config=write_config(model_name="ernie-3.0-medium-zh", data_dir=None))
    assert result.exit_code == 2, result.output
    assert f"FAIL  model: ernie-3.0-medium-zh is not in the cache ($PPNLP_HOME), and http://127.0.0.1:{port}/" in (
        result.output
    )
    assert (
        "FAIL  data: tnews is not in the cache ($PPNLP_HOME)" in result.output and "(ConnectionError)" in result.output
    )
    assert "-> fix: without network: run `python -m job prefetch --config C` on a connected machine" in result.output
    assert not (tmp_path / "empty").exists()


def test_own_data_with_a_missing_column_fails_the_doctor_and_validate(tmp_path: Path, write_config) -> None:
    data = tmp_path / "reviews"
    data.mkdir()
    for split in ("train", "dev"):
        (data / f"{split}.csv").write_text("review,label\n好,a\n坏,b\n", encoding="utf-8")
    config = write_config(dataset="own", data_dir=str(data), text_column="text")
    result = doctor(tmp_path, config=config)
    assert result.exit_code == 2 and "FAIL  data: " in result.output and "(set text_column: review)" in result.output
    checked = CliRunner().invoke(main, ["validate", "--config", str(config)])
    assert checked.exit_code == 2 and "no column 'text'; the header has 'review', 'label'" in checked.output
    fixed = CliRunner().invoke(main, ["validate", "--config", str(write_config(dataset="own", data_dir=str(data),
                                                                                text_column="review"))])  # fmt: skip
    assert fixed.exit_code == 0 and "data: train.csv: columns 'review', 'label'" in fixed.output


def test_a_clue_folder_whose_records_lack_the_tasks_fields_fails_the_doctor(tmp_path: Path, write_config) -> None:
    folder = tmp_path / "clue"
    folder.mkdir()
    for split in ("train", "dev"):
        (folder / f"{split}.json").write_text('{"text": "好", "label": "100"}\n', encoding="utf-8")
    result = doctor(tmp_path, config=write_config(data_dir=str(folder)))
    assert result.exit_code == 2, result.output
    assert "FAIL  data: " in result.output and "train.json:1: record has no 'sentence' text; its keys are 'text'" in (
        result.output
    )
    assert "config key 'text_column'" not in result.output  # a CLUE task's fields are not config keys
    assert "give data_dir the task's files in CLUE's format" in result.output


def test_a_password_in_the_mirrors_url_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config
) -> None:
    """PPNLP_ENDPOINT with credentials in it (https://user:secret@mirror/): doctor's lines and prefetch's
    error name the mirror with its user and password masked."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("PPNLP_ENDPOINT", f"http://reader:s3cr3t-token@127.0.0.1:{port}")
    from tests.fixtures import original_paddlenlp_urls

    config = write_config(model_name="ernie-3.0-medium-zh", data_dir=None)
    with original_paddlenlp_urls():
        checked = doctor(tmp_path, config=config)
        fetched = CliRunner().invoke(main, ["prefetch", "--config", str(config)])
    for result in (checked, fetched):
        assert result.exit_code in (2, 75), result.output
        assert "s3cr3t-token" not in result.output and "reader" not in result.output
        assert f"http://***@127.0.0.1:{port}/" in result.output


@pytest.mark.timeout(120)
def test_doctor_runs_each_kernel_kind_in_each_precision_and_names_the_one_that_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The GPU branch forced on this CPU wheel (an A100's capability: fp32, fp16, bf16 to try): fp32 runs
    every kernel; Paddle's CPU wheel has no fp16/bf16 matmul, softmax or layer norm and raises its own
    NotFound for each, which the doctor names kernel by kernel. Then a GPU architecture fault (CUDA error
    209, Paddle's words) in layer norm alone gets the architecture fix with the wheel's own list."""
    import paddle

    from job.doctor import kernel_checks
    from job.runtime.device import DeviceChoice

    a100 = DeviceChoice("gpu", "gpu:0 (NVIDIA A100, compute capability 8.0)", "requested", (8, 0))
    lines = {check.name: check for check in kernel_checks(a100)}
    assert lines["kernels (fp32)"].passed and lines["kernels (fp32)"].detail == (
        "matmul, softmax, layer norm, embedding gradient, SVD"
    )
    for precision in ("fp16", "bf16"):
        for kernel in ("matmul", "softmax", "layer norm"):
            check = lines[f"kernel {kernel} ({precision})"]
            assert not check.passed and "is not registered" in check.detail, check
            assert f"if only {precision} fails, use precision: fp32" in check.fix
        assert lines[f"kernels ({precision})"].detail == "embedding gradient"

    def no_kernel_image(*args, **kwargs):
        raise OSError(
            "(External) CUDA error(209), no kernel image is available for execution on the device. "
            "[Hint: 'cudaErrorNoKernelImageForDevice'.] (at /paddle/paddle/phi/kernels/gpu/layer_norm.cu:9)"
        )

    monkeypatch.setattr(paddle.nn.functional, "layer_norm", no_kernel_image)
    monkeypatch.setattr(paddle.version, "cuda_archs", lambda: [80, 90])
    cpu_only = DeviceChoice("gpu", "gpu:0 (compute capability 6.1)", "requested", (6, 1))  # fp32 alone
    (failed, passed) = list(kernel_checks(cpu_only))
    assert failed.name == "kernel layer norm (fp32)" and not failed.passed
    assert "CUDA error(209)" in failed.detail and "for Blackwell (sm_100, sm_120) build the image" in failed.fix
    assert failed.detail.endswith("; the wheel's kernels: sm_80, sm_90, this GPU: compute capability 6.1")
    assert passed.detail == "matmul, softmax, embedding gradient, SVD"
