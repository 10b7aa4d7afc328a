"""Models people can use afterwards: label names saved with every model, the adapter reloads onto its
base, and `job predict` runs any saved folder on new titles."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.data.labels import TNEWS_LABEL_DESC, TNEWS_LABELS
from tests.fixtures import keywords_for, make_sentence, original_paddlenlp_urls, run_tiny

FOLDERS = ("lora/adapter", "lora/merged", "full_finetune/model")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tnews_dir: Path) -> Path:
    """A run with saved artifacts: both strategies learn the keyword labels."""
    out = run_tiny(tmp_path_factory.mktemp("trained"), tiny_model, tnews_dir, learning_rate=5e-3,
                   lora_learning_rate=3e-2, num_epochs=6, max_train_samples=600, max_eval_samples=60,
                   save_artifacts=True)  # fmt: skip
    return out / "artifacts"


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_saved_model_carries_the_label_names(trained: Path, folder: str) -> None:
    config = json.loads((trained / folder / "config.json").read_text(encoding="utf-8"))
    tech = TNEWS_LABELS.index("109")
    assert config["id2label"][str(tech)] == "news_tech" and config["label2id"]["news_tech"] == tech
    assert config["job_labels"] == list(TNEWS_LABELS) and config["job_text_columns"] == ["sentence"]
    assert config["job_label_descriptions"] == [TNEWS_LABEL_DESC[code] for code in TNEWS_LABELS]


def test_the_adapter_names_its_base_and_reloads_to_the_merged_models_logits(trained: Path, tiny_model: Path) -> None:
    import paddle
    from paddlenlp.transformers import AutoModelForSequenceClassification

    from job.predict import load_saved_model

    lora = json.loads((trained / "lora" / "adapter" / "lora_config.json").read_text(encoding="utf-8"))
    assert lora["base_model_name_or_path"] == str(tiny_model.resolve())
    ids = paddle.to_tensor([[1, 8, 9, 10, 11, 2], [1, 12, 13, 2, 0, 0]])
    adapter = load_saved_model(trained / "lora" / "adapter").model
    merged = AutoModelForSequenceClassification.from_pretrained(str(trained / "lora" / "merged"))
    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_model))
    for model in (adapter, merged, base):
        model.eval()
    expected = merged(input_ids=ids).numpy()
    np.testing.assert_allclose(adapter(input_ids=ids).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(base(input_ids=ids).numpy(), expected, atol=1e-3)  # the adapter did load


@pytest.mark.parametrize("folder", FOLDERS)
def test_predict_prints_json_lines_with_label_names(trained: Path, folder: str, tmp_path: Path) -> None:
    # Titles built from one label's keywords: a model that learned the task names that label.
    titles = [keywords_for(9) * 2 + "的一是", keywords_for(3) * 2 + "了我不"]
    listing = tmp_path / "titles.txt"
    listing.write_text(json.dumps({"sentence": titles[1], "label": "103"}, ensure_ascii=False) + "\n\n", "utf-8")
    result = CliRunner(mix_stderr=False).invoke(
        main, ["predict", "--model", str(trained / folder), "--device", "cpu", titles[0], "--input", str(listing)]
    )
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON on stdout
    assert [line["sentence"] for line in lines] == titles
    for line in lines:
        assert set(line) == {"sentence", "label", "label_desc", "probability"}
        assert TNEWS_LABEL_DESC[line["label"]] == line["label_desc"] and 0 < line["probability"] <= 1


def test_predict_names_the_labels_a_trained_model_learned(trained: Path, tmp_path: Path) -> None:
    """New titles made like the training ones (fresh draws): the full fine-tuned tiny model names most
    of their labels (tiny LoRA is weaker: see below)."""
    rng = random.Random(2024)
    titles = [(make_sentence(index % len(TNEWS_LABELS), rng), TNEWS_LABELS[index % len(TNEWS_LABELS)])
              for index in range(45)]  # fmt: skip
    listing = tmp_path / "titles.txt"
    listing.write_text("\n".join(title for title, _ in titles) + "\n", encoding="utf-8")
    result = CliRunner(mix_stderr=False).invoke(
        main, ["predict", "--model", str(trained / "full_finetune/model"), "--input", str(listing)]
    )
    assert result.exit_code == 0, result.stderr
    predicted = [json.loads(line)["label"] for line in result.stdout.splitlines()]
    right = sum(label == gold for label, (_, gold) in zip(predicted, titles, strict=True))
    assert right >= 0.7 * len(titles), f"{right} of {len(titles)}"


def test_the_adapter_and_the_merged_model_predict_alike(trained: Path) -> None:
    titles = [keywords_for(index) + "的一是" for index in range(15)]

    def predicted(folder: str) -> list[dict]:
        result = CliRunner(mix_stderr=False).invoke(main, ["predict", "--model", str(trained / folder), *titles])
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    adapter, merged = predicted("lora/adapter"), predicted("lora/merged")
    assert [line["label"] for line in adapter] == [line["label"] for line in merged]
    assert [line["probability"] for line in adapter] == pytest.approx(
        [line["probability"] for line in merged], abs=1e-4
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp, trained: ["--model", str(tmp / "missing"), "x"], "model folder {tmp}/missing does not exist"),
        (lambda tmp, trained: ["--model", str(tmp), "x"], "is not a saved model: it has no config.json"),
        (
            lambda tmp, trained: ["--model", str(trained / "lora"), "x"],
            "lora is not a saved model: it has no config.json (the models in it are adapter, merged: --model {trained}"
            "/lora/adapter)",
        ),
        (
            lambda tmp, trained: ["--model", str(trained / "lora" / "merged"), "--input", str(empty(tmp))],
            "has no titles",
        ),
        (lambda tmp, trained: ["--model", str(trained / "lora" / "merged"), "--input", str(latin1(tmp))], "not UTF-8"),
        (lambda tmp, trained: ["--model", str(trained / "lora" / "merged")], "no titles: give them as arguments"),
    ],
    ids=["missing-folder", "not-a-model", "a-run-folder", "empty-file", "not-utf8", "no-titles"],
)
def test_predicts_bad_inputs_exit_2_naming_them(trained: Path, tmp_path: Path, make, message: str) -> None:
    result = CliRunner().invoke(main, ["predict", "--device", "cpu", *make(tmp_path, trained)])
    assert result.exit_code == 2, result.output
    assert message.format(tmp=tmp_path, trained=trained) in result.output and "Traceback" not in result.output


def merged(trained: Path) -> list[str]:
    return ["--model", str(trained / "lora" / "merged")]


def empty(folder: Path) -> Path:
    path = folder / "empty.txt"
    path.write_text("\n  \n", encoding="utf-8")
    return path


def latin1(folder: Path) -> Path:
    path = folder / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    return path


PICKLE_BOMB = """
import pathlib, pickle, sys
class Payload:
    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(sys.argv[2]),))
pathlib.Path(sys.argv[1]).write_bytes(pickle.dumps({"ernie.embeddings.word_embeddings.weight": Payload()}))
"""


def test_a_folder_with_safetensors_never_unpickles_its_pdparams(trained: Path, tmp_path: Path) -> None:
    """Beside the safetensors weights, a crafted model_state.pdparams whose unpickling touches a file:
    loading the folder (predict, and as a job's model_name) reads the safetensors and runs no pickle."""
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "model"
    shutil.copytree(trained / "full_finetune" / "model", folder)
    marker = tmp_path / "payload-ran"
    subprocess.run([sys.executable, "-c", PICKLE_BOMB, str(folder / "model_state.pdparams"), str(marker)], check=True)
    result = CliRunner(mix_stderr=False).invoke(main, ["predict", "--model", str(folder), "天地玄的一是"])
    assert result.exit_code == 0, result.stderr
    from job.training.model import load_model

    load_model(str(folder), 15)
    assert not marker.exists()
    import pickle

    pickle.loads((folder / "model_state.pdparams").read_bytes())  # the payload is real: unpickling runs it
    assert marker.exists()


@pytest.mark.parametrize("enabled", [True, False])
def test_visualdl_scalars_are_written_only_when_asked(write_config, tmp_path: Path, enabled: bool) -> None:
    from visualdl import LogReader

    config = write_config(num_epochs=1, visualdl=enabled, warmup_ratio=0.0)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    vdl = tmp_path / "out" / "vdl"
    if not enabled:
        assert not vdl.exists()
        return
    records = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))["runs"]
    for record in records:
        (log,) = (vdl / record["key"]).glob("vdlrecords.*.log")
        reader = LogReader(file_path=str(log))
        losses = [item.value for item in reader.get_data("scalar", "train/loss")]
        assert losses == pytest.approx(record["step_losses"], rel=1e-5)
        rates = [item.value for item in reader.get_data("scalar", "train/learning_rate")]
        assert rates[0] == pytest.approx(record["learning_rate"]) and rates[-1] < rates[0]  # linear decay
        (accuracy,) = reader.get_data("scalar", "dev/accuracy")
        assert accuracy.id == record["steps"] and accuracy.value == pytest.approx(record["dev"]["accuracy"])


def test_an_adapter_whose_base_is_gone_exits_2_naming_it(trained: Path, tmp_path: Path) -> None:
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "lora" / "adapter", adapter)
    config = json.loads((adapter / "lora_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (adapter / "lora_config.json").write_text(json.dumps(config), encoding="utf-8")
    result = CliRunner().invoke(main, ["predict", "--model", str(adapter), "天地玄"])
    assert result.exit_code == 2, result.output
    assert f"adapter {adapter} adapts {tmp_path / 'moved-away'}, which does not exist here" in result.output


def test_predicts_other_bad_inputs_exit_2_naming_them(trained: Path, tmp_path: Path) -> None:
    afile = tmp_path / "model.txt"
    afile.write_text("x", encoding="utf-8")
    cases = [
        (["--model", str(afile), "x"], f"--model {afile} is a file; give the model's folder"),
        ([*merged(trained), "--input", "/dev/zero"], "--input /dev/zero is larger than 268,435,456 bytes"),
        (
            [*merged(trained), "--max-seq-length", "1000", "x"],
            "--max-seq-length 1000 is above the model's limit of 128",
        ),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["predict", "--device", "cpu", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_an_adapter_on_a_base_of_another_shape_is_refused_naming_the_base(trained: Path, tmp_path: Path) -> None:
    """PaddleNLP would skip every tensor that does not fit and predict with a random head."""
    import shutil

    from paddlenlp.transformers import ErnieConfig, ErnieModel

    from tests.fixtures import TINY_ERNIE, write_vocab

    wider = tmp_path / "wider"
    wider.mkdir()
    vocab = write_vocab(wider / "vocab.txt")
    ErnieModel(ErnieConfig(**{**TINY_ERNIE, "hidden_size": 48, "intermediate_size": 96,
                              "vocab_size": len(vocab.read_text().split())})).save_pretrained(str(wider))  # fmt: skip
    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "lora" / "adapter", adapter)
    settings = json.loads((adapter / "lora_config.json").read_text(encoding="utf-8"))
    (adapter / "lora_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": str(wider)}))
    result = CliRunner().invoke(main, ["predict", "--model", str(adapter), "--device", "cpu", "天地"])
    assert result.exit_code == 2, result.output
    assert f"adapter {adapter} was trained on another base than {wider}: hidden_size 48 (the adapter's: 32)" in (
        result.output
    )


def test_an_adapter_whose_base_does_not_download_exits_75(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from tests.test_download_failures import community_store_at, refused_endpoint

    adapter = tmp_path / "adapter"
    shutil.copytree(trained / "lora" / "adapter", adapter)
    settings = json.loads((adapter / "lora_config.json").read_text(encoding="utf-8"))
    (adapter / "lora_config.json").write_text(json.dumps({**settings, "base_model_name_or_path": "ernie-hub-x"}))
    endpoint = refused_endpoint()  # nothing listens: the base's config cannot arrive
    community_store_at(endpoint, monkeypatch)
    monkeypatch.setenv("PPNLP_ENDPOINT", endpoint)
    with original_paddlenlp_urls():  # predict points PaddleNLP's model URLs at the mirror, in place
        result = CliRunner().invoke(main, ["predict", "--model", str(adapter), "--device", "cpu", "天地"])
    assert result.exit_code == 75, result.output
    assert f"could not download the base model 'ernie-hub-x' of adapter {adapter}" in result.output
