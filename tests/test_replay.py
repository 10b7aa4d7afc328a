"""`job replay` exports a run exactly as `job run` trains it, and the CPU LayerNorm correction the
parity with transformers found (job/training/layer_norm.py) computes the textbook gradient."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from safetensors.numpy import load_file

from job.cli import main
from job.replay import REPLAY_FILE, WEIGHTS_FILE
from tests.fixtures import build_tiny_model, run_tiny


@pytest.fixture(scope="module")
def silent_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ERNIE with every dropout at 0 in its config: `job run` then trains as the replay does."""
    return build_tiny_model(tmp_path_factory.mktemp("silent") / "model", dropout=0.0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("options", [{}, {"lora_pissa": True}], ids=["lora", "pissa"])
def test_the_replay_is_the_run_job_run_trains(tmp_path: Path, silent_model: Path, tnews_dir: Path, options) -> None:
    keys = {"strategies": ["lora"], "lora_dropout": 0.0, "num_epochs": 2, "lora_learning_rate": 5e-3, **options}
    out = run_tiny(tmp_path, silent_model, tnews_dir, **keys)
    record = json.loads(next((out / "results").glob("*.json")).read_text(encoding="utf-8"))["result"]
    result = CliRunner().invoke(
        main, ["replay", "--config", str(tmp_path / "config.yaml"), "--output", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    replay = json.loads((tmp_path / "r" / REPLAY_FILE).read_text(encoding="utf-8"))
    assert [round(loss, 6) for loss in replay["job"]["losses"]] == record["step_losses"]
    assert len(replay["batches"]) == record["steps"] == replay["settings"]["steps"]
    assert replay["job"]["dev_accuracy"] == record["dev"]["accuracy"]
    weights = load_file(str(tmp_path / "r" / WEIGHTS_FILE))
    trains = {p["name"] for p in replay["parameters"] if p["trains"]}
    assert sum(int(np.prod(weights[name].shape)) for name in trains) == record["trainable_params"]
    a_factors = [name for name in weights if name.endswith(".lora_A")]
    assert a_factors and all(np.abs(weights[name]).max() > 0 for name in a_factors)  # the random start is in it
    if options:  # PiSSA changed the weight it adapts: its value before is there too, and the factors add up to it
        name = a_factors[0].removesuffix(".lora_A")
        original = weights[f"base.{name}.weight"]
        rebuilt = weights[f"{name}.weight"] + weights[f"{name}.lora_A"] @ weights[f"{name}.lora_B"]
        assert np.abs(rebuilt - original).max() < 1e-5
    else:
        assert not [name for name in weights if name.startswith("base.")]


@pytest.mark.timeout(60)
def test_replay_names_the_planned_runs_when_the_run_is_not_one(
    tmp_path: Path, silent_model: Path, tnews_dir: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model_name": str(silent_model), "data_dir": str(tnews_dir)}), encoding="utf-8")
    typo = CliRunner().invoke(
        main, ["replay", "--config", str(config), "--run", "lroa", "--output", str(tmp_path / "r")]
    )
    assert typo.exit_code == 2, typo.output
    assert "'lroa' is not a planned run (lora, full_finetune); did you mean 'lora'?" in typo.output
    unnamed = CliRunner().invoke(main, ["replay", "--config", str(config), "--output", str(tmp_path / "r")])
    assert unnamed.exit_code == 2 and "the plan has 2 runs: name one with --run (lora, full_finetune)" in unnamed.output
    assert not (tmp_path / "r").exists()


def _input_gradient(frozen_scale: bool, corrected: bool) -> tuple[np.ndarray, np.ndarray]:
    """x's gradient through a LayerNorm with a non-trivial scale, and the formula's."""
    import paddle

    from job.training.layer_norm import exact_layer_norm_grad

    rng = np.random.default_rng(0)
    x_value, upstream = rng.standard_normal((3, 5, 64)), rng.standard_normal((3, 5, 64))
    scale = 0.5 + rng.random(64)
    layer = paddle.nn.LayerNorm(64)
    layer.weight.set_value(scale.astype("float32"))
    layer.weight.stop_gradient = frozen_scale
    x = paddle.to_tensor(x_value.astype("float32"), stop_gradient=False)
    if corrected:
        with exact_layer_norm_grad():
            out = layer(x)
    else:
        out = layer(x)
    (out * paddle.to_tensor(upstream.astype("float32"))).sum().backward()
    normalised = (x_value - x_value.mean(-1, keepdims=True)) / np.sqrt(x_value.var(-1, keepdims=True) + 1e-5)
    g = upstream * scale
    formula = (g - g.mean(-1, keepdims=True) - normalised * (g * normalised).mean(-1, keepdims=True)) / np.sqrt(
        x_value.var(-1, keepdims=True) + 1e-5
    )
    return x.grad.numpy(), formula


@pytest.mark.timeout(30)
def test_a_layer_norm_with_a_frozen_scale_passes_the_formulas_gradient_on_cpu() -> None:
    for frozen in (True, False):
        gradient, formula = _input_gradient(frozen, corrected=True)
        assert np.abs(gradient - formula).max() / np.abs(formula).max() < 1e-5
    # Paddle's own CPU kernel leaves the frozen scale out (the reason for the correction); if a Paddle upgrade
    # fixes paddle/phi/kernels/cpu/layer_norm_grad_kernel.cc, this says so and job/training/layer_norm.py can go.
    gradient, formula = _input_gradient(True, corrected=False)
    assert np.abs(gradient - formula).max() / np.abs(formula).max() > 0.05


@pytest.mark.timeout(60)
def test_a_new_head_starts_as_transformers_starts_one(tmp_path: Path) -> None:
    """A checkpoint without a classifier gets one drawn as transformers' ERNIE draws it (_init_weights:
    normal with the config's initializer_range, 0.02, and a zero bias), so the peer's replay starts where a
    transformers user's run would."""
    import paddle

    from job.training.model import load_model
    from tests.fixtures import build_tiny_encoder

    encoder = build_tiny_encoder(tmp_path / "encoder")
    paddle.seed(7)
    loaded = load_model(str(encoder), 15)
    assert sorted(loaded.reinitialised) == ["classifier.bias", "classifier.weight"]
    weight = dict(loaded.model.named_parameters())["classifier.weight"].numpy()
    bias = dict(loaded.model.named_parameters())["classifier.bias"].numpy()
    assert abs(float(weight.std()) - 0.02) < 0.002 and abs(float(weight.mean())) < 0.002
    assert not bias.any()
