"""Strategies on the tiny model, trained for real with the shared loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from job.config.plan import Run, plan_runs
from job.config.schema import validate_config
from job.data.batches import encode
from job.data.labels import TNEWS
from job.data.sampling import draw_samples
from job.data.sources import DataSpec, read_source
from job.errors import UserError
from job.runtime.signals import StopRequest
from job.training.loop import TrainSettings, train
from job.training.model import count_parameters, load_model, load_tokenizer
from job.training.strategies import STRATEGIES
from tests.fixtures import TINY_ERNIE

HIDDEN = TINY_ERNIE["hidden_size"]
LAYERS = TINY_ERNIE["num_hidden_layers"]


def planned(tiny_model: Path, strategy: str, **overrides) -> Run:
    """The first planned run of `strategy` for a config on the tiny model."""
    config = validate_config(
        {"model_name": str(tiny_model), "lora_r": 4, "lora_alpha": 8, "strategies": list(STRATEGIES), **overrides}
    )
    return next(run for run in plan_runs(config) if run.strategy.name == strategy)


def prepared(tiny_model: Path, strategy: str, **overrides):
    import paddle

    run = planned(tiny_model, strategy, **overrides)
    paddle.seed(0)
    loaded = load_model(str(tiny_model), len(TNEWS))
    return STRATEGIES[strategy].prepare(loaded, run), run


def snapshot(model) -> dict[str, np.ndarray]:
    return {name: p.numpy().copy() for name, p in model.named_parameters()}


def train_briefly(model, tiny_model: Path, tnews_dir: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_model))
    splits = draw_samples(read_source(DataSpec(data_dir=str(tnews_dir))), 64, 8, seed=1)
    rows = encode(splits.train.examples, tokenizer, 32)
    settings = TrainSettings(1e-2, 16, 1, 0.01, 0.0, 1.0, seed=1, logging_steps=100)
    train(model, rows, settings, pad_id=tokenizer.pad_token_id, label="test", stop=StopRequest())


def test_lora_trainable_count_follows_the_formula(tiny_model: Path) -> None:
    model, run = prepared(tiny_model, "lora")
    trainable, total = count_parameters(model)
    wrapped = 2 * LAYERS  # q_proj and v_proj in each layer
    adapters = wrapped * run.lora.r * (HIDDEN + HIDDEN)
    head = HIDDEN * len(TNEWS) + len(TNEWS)
    assert trainable == adapters + head
    base_total = count_parameters(prepared(tiny_model, "full_finetune")[0])[1]
    assert total == base_total + adapters


def test_lora_targets_follow_the_config(tiny_model: Path) -> None:
    model, run = prepared(tiny_model, "lora", lora_target_modules=[r".*\.linear1"])
    trainable, _ = count_parameters(model)
    intermediate = TINY_ERNIE["intermediate_size"]
    assert trainable == LAYERS * run.lora.r * (HIDDEN + intermediate) + HIDDEN * len(TNEWS) + len(TNEWS)


def test_lora_target_that_matches_nothing_is_a_user_error(tiny_model: Path) -> None:
    with pytest.raises(UserError, match=r"'lora_target_modules': '\.\*query' matches no layer"):
        prepared(tiny_model, "lora", lora_target_modules=[".*query"])


def test_lora_changes_only_adapters_and_head(tiny_model: Path, tnews_dir: Path) -> None:
    model, _ = prepared(tiny_model, "lora")
    before = snapshot(model)
    train_briefly(model, tiny_model, tnews_dir)
    after = snapshot(model)
    trainable = {name for name, p in model.named_parameters() if not p.stop_gradient}
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    for name in before:
        if name in trainable:
            assert not np.array_equal(before[name], after[name]), f"{name} did not train"
        else:
            assert np.array_equal(before[name], after[name]), f"frozen {name} changed"


def test_full_finetune_changes_every_parameter(tiny_model: Path, tnews_dir: Path) -> None:
    model, _ = prepared(tiny_model, "full_finetune")
    before = snapshot(model)
    train_briefly(model, tiny_model, tnews_dir)
    after = snapshot(model)
    unchanged = [name for name in before if np.array_equal(before[name], after[name])]
    # Rows of the embedding tables for unseen tokens may stay; every parameter tensor must move.
    assert unchanged == []


def test_both_strategies_start_from_the_same_weights(tiny_model: Path) -> None:
    lora, _ = prepared(tiny_model, "lora")
    full, _ = prepared(tiny_model, "full_finetune")
    full_weights = snapshot(full)
    for name, value in snapshot(lora).items():
        plain = name.replace("model.", "", 1) if name.startswith("model.") else name
        if "lora_" not in name:
            assert np.array_equal(value, full_weights[plain]), name


def test_merged_lora_artifact_predicts_like_the_adapter(tiny_model: Path, tnews_dir: Path, tmp_path: Path) -> None:
    import paddle
    from paddlenlp.transformers import AutoModelForSequenceClassification

    model, _ = prepared(tiny_model, "lora")
    train_briefly(model, tiny_model, tnews_dir)
    model.eval()
    ids = paddle.to_tensor([[1, 8, 9, 10, 2]])
    expected = model(input_ids=ids).numpy()
    tokenizer = load_tokenizer(str(tiny_model))
    adapter, merged, peft = STRATEGIES["lora"].save_artifacts(model, tokenizer, tmp_path)
    assert (peft / "adapter_config.json").is_file() and (peft / "adapter_model.safetensors").is_file()
    assert (adapter / "lora_config.json").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(merged))
    reloaded.eval()
    np.testing.assert_allclose(reloaded(input_ids=ids).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_every_run_of_a_seed_starts_from_the_same_weights_head_included(
    tiny_encoder: Path, tnews_dir: Path, tmp_path: Path
) -> None:
    """From a checkpoint without a head (as the pretrained model comes), the head is created after
    paddle.seed: every strategy and rank of a seed records one fingerprint, and so does a second run."""
    import json

    import yaml
    from click.testing import CliRunner

    from job.cli import main

    def run(folder: str) -> list[dict]:
        config = tmp_path / f"{folder}.yaml"
        config.write_text(yaml.safe_dump({
            "model_name": str(tiny_encoder), "data_dir": str(tnews_dir), "max_seq_length": 32, "batch_size": 16,
            "num_epochs": 1, "max_train_samples": 48, "max_eval_samples": 16, "device": "cpu",
            "lora_r": [2, 4], "lora_alpha": 8, "seed": [1, 2], "output_dir": str(tmp_path / folder),
        }), encoding="utf-8")  # fmt: skip
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / folder / "results.json").read_text(encoding="utf-8"))["runs"]

    first, second = run("first"), run("second")
    assert len(first) == 6 and all(
        r["reinitialised_parameters"] == ["classifier.bias", "classifier.weight"] for r in first
    )
    by_seed = {seed: {r["initial_weights"] for r in first if r["seed"] == seed} for seed in (1, 2)}
    assert all(len(prints) == 1 for prints in by_seed.values())  # all strategies and ranks of a seed
    assert by_seed[1] != by_seed[2]  # the head is seeded by the run's seed
    assert [r["initial_weights"] for r in first] == [r["initial_weights"] for r in second]
