"""A LoRA run's adapter written in PEFT's own format (artifacts/<run>/peft) loads with PEFT onto
transformers' ERNIE and gives the job's logits: a transformers user takes the job's adapter as it is."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.training.peft_format import hf_name, is_linear_weight
from tests.parity import PEER_PYTHON

ROOT = Path(__file__).resolve().parents[1]
TITLES = ["天地玄黄的一是", "宇宙洪荒了我不", "日月盈昃人在他有这个"]


@pytest.mark.timeout(60)
def test_the_peft_adapter_holds_pefts_names_and_torchs_layouts(write_config, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(strategies=["lora"], save_artifacts=True))])
    assert result.exit_code == 0, result.output[-2000:]
    folder = tmp_path / "out" / "artifacts" / "lora" / "peft"
    settings = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    assert (settings["peft_type"], settings["task_type"], settings["r"], settings["lora_alpha"]) == ("LORA", "SEQ_CLS",
                                                                                                    4, 8)  # fmt: skip
    assert settings["target_modules"] == [f"ernie.encoder.layer.{i}.attention.self.{kind}" for i in (0, 1)
                                          for kind in ("query", "value")]  # fmt: skip
    from safetensors.numpy import load_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert tensors["base_model.model.ernie.encoder.layer.0.attention.self.query.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.ernie.encoder.layer.0.attention.self.query.lora_B.weight"].shape == (32, 4)
    assert tensors["base_model.model.classifier.weight"].shape == (15, 32)  # torch's [out, in]
    assert len(tensors) == 2 * 2 * 2 + 2


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_lora_runs_peft_adapter_loads_in_peft_and_gives_the_jobs_logits(
    write_config, tmp_path: Path, tiny_model: Path
) -> None:
    if not PEER_PYTHON.is_file():
        pytest.skip(f"no peer venv at {PEER_PYTHON.parent.parent} (make .venv-peer/.installed)")
    import paddle
    from safetensors.numpy import save_file

    from job.predict import load_saved_model
    from job.training.model import load_tokenizer

    config = write_config(strategies=["lora"], save_artifacts=True, learning_rate=5e-2)  # B far from 0
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output[-2000:]
    artifacts = tmp_path / "out" / "artifacts" / "lora"
    state = paddle.load(str(tiny_model / "model_state.pdparams"))
    base = {}
    for name, value in state.items():
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
        if not name.startswith("classifier."):  # the adapter brings the trained head
            base[hf_name(name)] = array.T.copy() if is_linear_weight(name, array) else array
    save_file(base, str(tmp_path / "base.safetensors"))
    shape = json.loads((tiny_model / "config.json").read_text(encoding="utf-8"))
    shape["num_classes"] = 15
    (tmp_path / "shape.json").write_text(json.dumps(shape), encoding="utf-8")
    tokenizer = load_tokenizer(str(tiny_model))
    encoded = tokenizer(TITLES, padding=True)
    inputs = {"input_ids": encoded["input_ids"], "token_type_ids": encoded["token_type_ids"]}
    (tmp_path / "inputs.json").write_text(json.dumps(inputs), encoding="utf-8")
    saved = load_saved_model(artifacts / "merged")
    saved.model.eval()
    with paddle.no_grad():
        mine = saved.model(input_ids=paddle.to_tensor(inputs["input_ids"]),
                           token_type_ids=paddle.to_tensor(inputs["token_type_ids"])).numpy()  # fmt: skip
    peer = subprocess.run([str(PEER_PYTHON), str(ROOT / "peer" / "peft_logits.py"), str(tmp_path / "base.safetensors"),
                           str(tmp_path / "shape.json"), str(artifacts / "peft"), str(tmp_path / "inputs.json")],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert peer.returncode == 0, peer.stderr[-3000:]
    theirs = np.array(json.loads(peer.stdout.strip().splitlines()[-1])["logits"])
    np.testing.assert_allclose(theirs, mine, atol=1e-4, rtol=1e-4)
    assert np.abs(mine).max() > 0.01 and (theirs.argmax(1) == mine.argmax(1)).all()
