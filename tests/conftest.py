"""Shared fixtures: a tiny ERNIE and a learnable TNEWS-format data folder, built once per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from job.runtime.cpu import set_cpu_thread_defaults

set_cpu_thread_defaults()  # before Paddle is imported, as `python -m job` does
# PaddleNLP's cache ($PPNLP_HOME) is read when PaddleNLP is imported: an empty one of the suite's own, so
# a download test never finds a file a user (or an earlier run) cached.
os.environ["PPNLP_HOME"] = tempfile.mkdtemp(prefix="ppnlp-home-")
atexit.register(shutil.rmtree, os.environ["PPNLP_HOME"], ignore_errors=True)

from tests.fixtures import build_tiny_encoder, build_tiny_model, build_tnews_folder  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model without a classifier head, as a pretrained checkpoint comes."""
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder") / "model")


@pytest.fixture(scope="session")
def tnews_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tnews_folder(tmp_path_factory.mktemp("tnews") / "data")


@pytest.fixture
def write_config(tmp_path: Path, tiny_model: Path, tnews_dir: Path):
    """Write a small config for the tiny model and data; keyword arguments override keys."""

    def write(**overrides: Any) -> Path:
        values = {
            "model_name": str(tiny_model), "data_dir": str(tnews_dir), "max_seq_length": 32, "batch_size": 16,
            "learning_rate": 5e-3, "num_epochs": 2, "max_train_samples": 300, "max_eval_samples": 60,
            "output_dir": str(tmp_path / "out"), "device": "cpu", "lora_r": 4, "lora_alpha": 8,
            "eval_batch_size": 32,
        }  # fmt: skip
        values.update(overrides)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def shared_tnews() -> Path:
    folder = SHARED_DATA / "tnews"
    if not (folder / "train.json").is_file():
        pytest.skip(f"real TNEWS data not present at {folder}")
    return folder
