"""`job import-hf`: a Hugging Face-format ERNIE checkpoint (transformers' layout) becomes a PaddleNLP model
folder with the same outputs: names mapped, Linear weights transposed. Checked against transformers itself
in the peer venv (skipped without it)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from tests.parity import PEER_PYTHON

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_hugging_face_ernie_imports_to_a_paddle_folder_with_the_same_outputs(tmp_path: Path) -> None:
    if not PEER_PYTHON.is_file():
        pytest.skip(f"no peer venv at {PEER_PYTHON.parent.parent} (make .venv-peer/.installed)")
    import paddle
    from paddlenlp.transformers import ErnieModel

    inputs = {"input_ids": [[1, 7, 8, 9, 2, 0, 0], [1, 30, 31, 32, 33, 34, 2]],
              "token_type_ids": [[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]]}  # fmt: skip
    (tmp_path / "inputs.json").write_text(json.dumps(inputs), encoding="utf-8")
    hf = tmp_path / "hf"
    command = [str(PEER_PYTHON), str(ROOT / "peer" / "hf_ernie.py"), str(hf), str(tmp_path / "inputs.json")]
    peer = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert peer.returncode == 0, peer.stderr[-3000:]
    theirs = json.loads(peer.stdout.strip().splitlines()[-1])
    result = CliRunner().invoke(main, ["import-hf", "--from", str(hf), "--to", str(tmp_path / "paddle")])
    assert result.exit_code == 0, result.output[-2000:]
    model = ErnieModel.from_pretrained(str(tmp_path / "paddle"))
    model.eval()
    with paddle.no_grad():
        sequence, pooled = model(input_ids=paddle.to_tensor(inputs["input_ids"]),
                                 token_type_ids=paddle.to_tensor(inputs["token_type_ids"]))[:2]  # fmt: skip
    mask = np.array(inputs["input_ids"]) != 0  # padding positions' states are not compared (each side its own)
    np.testing.assert_allclose(sequence.numpy()[mask], np.array(theirs["sequence"])[mask], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(pooled.numpy(), np.array(theirs["pooled"]), atol=1e-5, rtol=1e-4)
    again = CliRunner().invoke(main, ["import-hf", "--from", str(hf), "--to", str(tmp_path / "paddle")])
    assert again.exit_code == 2 and "exists: give a folder that does not exist yet" in again.output


def test_a_folder_that_is_not_a_hugging_face_ernie_is_refused_naming_what_it_lacks(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    result = CliRunner().invoke(main, ["import-hf", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "out")])
    assert result.exit_code == 2 and "has no model.safetensors" in result.output, result.output
    for name in ("model.safetensors", "vocab.txt"):
        (tmp_path / "hf" / name).write_text("x", encoding="utf-8")
    bert = CliRunner().invoke(main, ["import-hf", "--from", str(tmp_path / "hf"), "--to", str(tmp_path / "out")])
    assert bert.exit_code == 2 and "describes a 'bert' model, not transformers' ERNIE" in bert.output
    assert not (tmp_path / "out").exists()
