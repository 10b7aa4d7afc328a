"""The real architecture through the paths users rely on: `ernie-3.0-medium-zh` by name from a
pre-populated $PPNLP_HOME model cache (random weights: pretrained ones cannot be fetched here), and
TNEWS through PaddleNLP's dataset cache when the real files are in ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.fixtures import build_tnews_folder, write_vocab

ROOT = Path(__file__).resolve().parents[1]
FULL_TOTAL = 75_439_119
LORA_TRAINABLE = 306_447  # q,v in 6 layers at r=16: 6*2*16*(768+768) = 294,912, plus the head 768*15+15


def populate_cache(home: Path) -> bool:
    """Write what PaddleNLP would download. Returns whether the real TNEWS files were linked."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    model_dir = home / "models" / "ernie-3.0-medium-zh"
    model_dir.mkdir(parents=True)
    paddle.seed(0)
    encoder = ErnieModel(ErnieConfig.from_pretrained("ernie-3.0-medium-zh"))
    paddle.save(encoder.state_dict(), str(model_dir / "model_state.pdparams"))
    encoder.config.save_pretrained(str(model_dir))
    vocab = SHARED_DATA / "ernie-3.0-medium-zh" / "vocab.txt"
    if vocab.is_file():
        os.symlink(vocab, model_dir / "ernie_3.0_medium_zh_vocab.txt")
    else:
        write_vocab(model_dir / "ernie_3.0_medium_zh_vocab.txt")
    tnews = SHARED_DATA / "tnews"
    if not (tnews / "train.json").is_file():
        return False
    data_dir = home / "datasets" / "Clue" / "tnews_public"
    data_dir.parent.mkdir(parents=True)
    data_dir.symlink_to(tnews, target_is_directory=True)  # data files are read only inside their folder
    return True


@pytest.mark.slow
def test_full_size_model_by_name_through_the_paddlenlp_cache(tmp_path: Path) -> None:
    home = tmp_path / "ppnlp"
    real_data = populate_cache(home)
    args = ["--set", "max_train_samples=16", "--set", "max_eval_samples=16", "--output-dir", str(tmp_path / "out")]
    if not real_data:
        args += ["--set", f"data_dir={build_tnews_folder(tmp_path / 'data')}"]
    result = subprocess.run(
        [sys.executable, "-m", "job", "run", "--config", "configs/tnews_lora_vs_full.yaml", *args],
        env={**os.environ, "PPNLP_HOME": str(home), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, cwd=ROOT, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    lora, full = results["runs"]
    assert (full["trainable_params"], full["total_params"]) == (FULL_TOTAL, FULL_TOTAL)
    assert lora["trainable_params"] == LORA_TRAINABLE
    assert lora["total_params"] == FULL_TOTAL + LORA_TRAINABLE - (768 * 15 + 15)
    assert lora["steps"] == full["steps"] == 2
    assert lora["reinitialised_parameters"] == ["classifier.bias", "classifier.weight"]
    if real_data:
        assert "PaddleNLP clue/tnews" in results["run"]["data"]["train"]["source"]
        assert "16 of 53,360 rows" in results["run"]["data"]["train"]["source"]
        assert "Data files: train.json (md5 checked by PaddleNLP), dev.json (md5 checked by PaddleNLP)" in (
            tmp_path / "out" / "ernie_lora_vs_full_report.md"
        ).read_text(encoding="utf-8")
    report = (tmp_path / "out" / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "| lora (r=16, α=32, dropout=0.1, lr=5e-05) | 306,447 | 75,734,031 |" in report
    assert "| full_finetune (lr=5e-05) | 75,439,119 | 75,439,119 |" in report
    assert "trained 306,447 of 75,734,031 parameters (0.405%)" in report
