"""`job export-model`: the offline route reaches a model. A PaddleNLP model the cache holds (as `job prefetch`
leaves it: the weights and vocabulary files under $PPNLP_HOME/models/<name>/, no config.json) becomes a model
folder of its own that `validate` and `run` accept as `model_name`, with no network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NAME = "ernie-3.0-nano-zh"  # the smallest built-in ERNIE 3.0 (4 layers of 312)


def job(*args: str, home: Path) -> subprocess.CompletedProcess:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"  # any download would fail
    env = {**os.environ, "PPNLP_HOME": str(home), "PPNLP_ENDPOINT": closed, "HTTP_PROXY": closed,
           "HTTPS_PROXY": closed, "NO_PROXY": "", "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "job", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=280, check=False)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_export_model_turns_the_cache_into_a_model_folder_run_accepts_offline(tmp_path: Path, tnews_dir: Path) -> None:
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    home = tmp_path / "cache"
    cached = home / "models" / NAME
    cached.mkdir(parents=True)
    paddle.seed(0)
    encoder = ErnieModel(ErnieConfig(**ErnieModel.pretrained_init_configuration[NAME]))
    paddle.save(encoder.state_dict(), str(cached / "model_state.pdparams"))
    vocab = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [f"t{i}" for i in range(40000 - 5)]
    (cached / "ernie_3.0_nano_zh_vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")

    missing = job("export-model", "--set", "model_name=ernie-3.0-mini-zh", "--to", str(tmp_path / "x"), home=home)
    assert missing.returncode == 2 and "ernie-3.0-mini-zh is not in the model cache (" in missing.stderr, missing.stderr
    result = job("export-model", "--set", f"model_name={NAME}", "--to", str(tmp_path / "nano"), home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "nano"
    assert f"set model_name: {folder}" in result.stdout and (folder / "config.json").is_file()
    assert not list(tmp_path.glob(".nano.partial"))
    from safetensors.numpy import load_file

    exported = load_file(str(folder / "model.safetensors"))
    original = {name: value.numpy() for name, value in encoder.state_dict().items()}
    assert len(exported) == len(original)
    for name, value in original.items():
        np.testing.assert_array_equal(exported[name.removeprefix("ernie.")] if name not in exported else exported[name],
                                      value, err_msg=name)  # fmt: skip
    again = job("export-model", "--set", f"model_name={NAME}", "--to", str(folder), home=home)
    assert again.returncode == 2 and "exists: give a folder that does not exist yet" in again.stderr
    valid = job("validate", "--set", f"model_name={folder}", home=home)
    assert valid.returncode == 0 and f"model: local folder {folder}" in valid.stderr, valid.stderr
    trained = job("run", "--set", f"model_name={folder}", "--set", f"data_dir={tnews_dir}", "--set", "device=cpu",
                  "--set", "max_train_samples=32", "--set", "max_eval_samples=16", "--set", "max_seq_length=16",
                  "--set", "strategies=[lora]", "--set", f"output_dir={tmp_path / 'out'}", home=home)  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "newly initialised (not in the checkpoint): classifier.bias, classifier.weight" in trained.stderr
