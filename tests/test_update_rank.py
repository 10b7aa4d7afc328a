"""The effective rank of full fine-tuning's learned update, on weights whose update has a known rank,
and in a real run's record and report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from job.training.update_rank import (
    WEIGHT_KINDS,
    energy_rank,
    kind_of,
    random_rank,
    spectrum,
    stable_rank,
    trained_weights,
    update_analysis,
)
from tests.fixtures import TINY_ERNIE, run_tiny


def low_rank(rows: int, cols: int, singular: list[float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((rows, len(singular))))
    v, _ = np.linalg.qr(rng.standard_normal((cols, len(singular))))
    return (u * np.asarray(singular)) @ v.T


def test_the_energy_rank_counts_the_directions_holding_90_percent() -> None:
    assert energy_rank(low_rank(64, 48, [1.0] * 7)) == 7  # 7 equal directions: all 7 are needed
    assert energy_rank(low_rank(64, 48, [10.0, 5.0, 1.0])) == 2  # 100 + 25 of 126: 99% in two
    assert energy_rank(low_rank(64, 48, [3.0, 1.0])) == 1  # 9 of 10: exactly 90% in one
    assert energy_rank(low_rank(64, 48, [2.0, 1.0])) == 2  # 4 of 5: 80%, so two
    assert energy_rank(np.zeros((8, 8))) == 0
    full = np.random.default_rng(1).standard_normal((40, 40))
    assert 20 <= energy_rank(full) < 40  # a random update spreads its energy over most directions


def test_a_layers_update_of_known_rank_is_measured_at_that_rank(tiny_model: Path) -> None:
    import paddle

    from job.training.model import load_model

    model = load_model(str(tiny_model), 15).model  # every weight trains, as in full fine-tuning
    before = trained_weights(model)
    kinds = {kind_of(name) for name in before}
    assert kinds == set(WEIGHT_KINDS) and len(before) == 6 * TINY_ERNIE["num_hidden_layers"]
    with paddle.no_grad():
        for index, (name, parameter) in enumerate(model.named_parameters()):
            if name in before:
                rank = 1 + index % 4  # 1, 2, 3 or 4 equal directions, by position
                update = low_rank(*parameter.shape, [0.5] * rank, seed=index)
                parameter.set_value(parameter + paddle.to_tensor(update, dtype=parameter.dtype))
    ranks = update_analysis(before, model).ranks
    expected: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(model.named_parameters()):
        if name in before:
            expected.setdefault(kind_of(name), []).append(1 + index % 4)
    assert ranks == {kind: expected[kind] for kind in WEIGHT_KINDS}


def test_a_full_fine_tuning_run_records_and_reports_its_update_rank_and_lora_none(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, max_train_samples=96, max_eval_samples=32, num_epochs=2,
                   full_finetune_learning_rate=1e-2)  # fmt: skip
    runs = {r["strategy"]: r for r in json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]}
    full, lora = runs["full_finetune"]["update_rank"], runs["lora"]["update_rank"]
    layers, hidden = TINY_ERNIE["num_hidden_layers"], TINY_ERNIE["hidden_size"]
    assert lora == {} and list(full) == list(WEIGHT_KINDS)
    assert all(len(values) == layers and all(1 <= v <= hidden for v in values) for values in full.values())
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    line = next(line for line in report.splitlines() if line.startswith("- Effective rank of the learned update"))
    q, stable = full["q"], runs["full_finetune"]["update_stable_rank"]["q"]
    random = runs["full_finetune"]["update_rank_random"]
    assert random == {kind: random_rank((hidden, 64) if kind == "FFN in" else (64, hidden) if kind == "FFN out"
                                        else (hidden, hidden)) for kind in WEIGHT_KINDS}  # fmt: skip
    assert len(stable) == layers and all(1.0 <= value <= hidden for value in stable)
    assert (f"q {float(np.median(q)):g} ({min(q)}–{max(q)}; a random matrix of its shape: {random['q']}; stable rank "
            f"{float(np.median(stable)):.1f})") in line and "LoRA's rank here: r = 4" in line  # fmt: skip
    assert re.search(rf"full_finetune \(lr=0\.01\), over {layers} layers: q ", line)
    intruders = {name: runs[name]["intruder_dimensions"] for name in ("lora", "full_finetune")}
    assert list(intruders["lora"]) == ["q", "v"] and list(intruders["full_finetune"]) == list(WEIGHT_KINDS)
    assert all(len(values) == layers and all(0 <= v <= 10 for v in values)
               for counts in intruders.values() for values in counts.values())  # fmt: skip
    assert "- Intruder dimensions (of each fine-tuned weight's top 10 singular vectors, those with no pretrained " in (
        report
    )
    from job.output.storage import open_output
    from job.results.overlap import read_directions, seed_overlaps

    combined = json.loads((out / "results.json").read_text(encoding="utf-8"))
    stored = {key: read_directions(open_output(out), combined["run"]["config_hash"], runs[key]["key"])
              for key in ("lora", "full_finetune")}  # fmt: skip
    assert len(stored["full_finetune"]) == 6 * layers and all(d.shape[1] == 4 for d in stored["full_finetune"].values())
    assert len(stored["lora"]) == 2 * layers  # q and v
    overlap = combined["comparisons"][0]["subspace_overlap"]
    assert overlap == pytest.approx(seed_overlaps(stored["lora"], stored["full_finetune"]), abs=1e-4)
    assert list(overlap) == ["q", "v"] and all(0.0 <= value <= 1.0 for value in overlap.values())
    assert combined["comparisons"][0]["subspace_random"] == {"q": 4 / hidden, "v": 4 / hidden}
    line = next(line for line in report.splitlines() if line.startswith("- Subspace overlap"))
    assert f"q {overlap['q']:.2f} (random {4 / hidden:.3f})" in line
    from job.results.overlap import read_spectra, spectrum_curves
    from job.results.schema import Combined

    spectra = read_spectra(open_output(out), combined["run"]["config_hash"], runs["lora"]["key"])
    assert len(spectra) == 2 * layers and all(values.size == 4 for values in spectra.values())  # r values each
    typed = Combined.model_validate_json((out / "results.json").read_text(encoding="utf-8"))
    curves = spectrum_curves(open_output(out), typed, typed.comparisons[0], "full_finetune", "q")
    assert set(curves) == {"full", "row", "random"} and all(curve.size == hidden for curve in curves.values())
    assert curves["row"][3] == pytest.approx(1.0) and curves["full"][-1] == pytest.approx(1.0)  # LoRA: all in r = 4
    assert (
        curves["random"][random_rank((hidden, hidden)) - 1] >= 0.9 > curves["random"][random_rank((hidden, hidden)) - 2]
    )
    assert all(np.all(np.diff(curve) >= -1e-9) for curve in curves.values())  # cumulative
    assert (out / "update_spectrum.png").stat().st_size > 10_000
    assert "![What the learned updates are made of](update_spectrum.png)" in report


@pytest.mark.parametrize(
    "name", ["ernie.encoder.layers.3.self_attn.q_proj.weight", "ernie.encoder.layers.0.linear2.weight"]
)
def test_weight_kinds_are_read_from_ernies_parameter_names(name: str) -> None:
    assert kind_of(name) in WEIGHT_KINDS and kind_of(name.replace(".weight", ".bias")) is None


def test_the_rank_read_from_the_gram_matrix_is_the_singular_values_rank_for_tall_and_wide_updates() -> None:
    from scipy.linalg import svdvals

    rng = np.random.default_rng(3)
    for shape in [(30, 90), (90, 30), (64, 64)]:
        update = low_rank(*shape, [8.0, 4.0, 2.0, 1.0]) + 0.05 * rng.standard_normal(shape)
        squares = svdvals(update) ** 2
        expected = int(np.searchsorted(np.cumsum(squares) / squares.sum(), 0.9 - 1e-12) + 1)
        assert energy_rank(update) == expected, shape
        assert energy_rank(update.T) == expected, shape


def test_the_stable_rank_and_the_random_baseline_have_their_known_values() -> None:
    """A matrix with singular values 3, 1, 1, 1 has stable rank (9 + 3) / 9; a rank-one update 1; none 0. A
    random Gaussian matrix spreads its energy: 90% needs about half the directions of a square one."""
    diagonal = np.diag([3.0, 1.0, 1.0, 1.0])
    assert stable_rank(spectrum(diagonal)) == pytest.approx(12 / 9)
    assert stable_rank(spectrum(np.outer(np.arange(1.0, 6.0), np.arange(1.0, 4.0)))) == pytest.approx(1.0)
    assert stable_rank(spectrum(np.zeros((3, 3)))) == 0.0
    assert random_rank((768, 768)) == 391 and random_rank((768, 3072)) == random_rank((3072, 768)) == 585
    square = random_rank((64, 64))
    assert square == energy_rank(np.random.default_rng(0).standard_normal((64, 64))) and 25 <= square <= 40


def test_a_planted_intruder_direction_is_counted_and_a_scaled_weight_has_none() -> None:
    """The pretrained weight's singular vectors are the axes (a diagonal of distinct values); a fine-tuned
    weight with a strong spike along a direction far from every axis (cosine 1/sqrt(n) with each) gains one
    intruder; the same weight scaled, or nudged along its own axes, gains none."""
    from job.training.update_rank import intruder_count, singular_directions

    n = 64
    before = np.diag(np.linspace(1.0, 2.0, n))
    direction = np.ones(n) / np.sqrt(n)  # cosine 0.125 with every axis
    spiked = before + 10.0 * np.outer(direction, direction)
    assert intruder_count(before, spiked) == 1
    assert intruder_count(before, before * 1.5) == 0
    assert intruder_count(before, before + np.diag(np.linspace(0.0, 0.1, n))) == 0
    other = np.r_[np.ones(n // 2), -np.ones(n // 2)] / np.sqrt(n)  # orthogonal to `direction`, as far from the axes
    two = spiked + 9.0 * np.outer(other, other)
    assert intruder_count(before, two) == 2
    assert intruder_count(before, spiked, threshold=0.1) == 0  # cosine 0.125 is above a threshold of 0.1
    wide = np.random.default_rng(1).standard_normal((8, 20))
    assert singular_directions(wide).shape == (8, 8) and singular_directions(wide, 3).shape == (8, 3)


@pytest.mark.parametrize("shape", [(48, 48), (96, 32), (32, 96)], ids=["square", "tall", "wide"])
def test_an_update_built_inside_a_known_subspace_overlaps_it_fully_and_a_random_one_by_r_over_d(shape) -> None:
    from job.training.update_rank import input_directions, subspace_overlap

    rng = np.random.default_rng(3)
    rows, cols = shape
    basis, _ = np.linalg.qr(rng.standard_normal((rows, 4)))
    inside = basis @ rng.standard_normal((4, cols))  # every column in the basis' span
    found = input_directions(inside, 4)
    assert found.shape == (rows, 4) and np.allclose(found.T @ found, np.eye(4), atol=1e-5)
    assert subspace_overlap(found, basis) == pytest.approx(1.0, abs=1e-5)
    complement = np.linalg.qr(np.c_[basis, rng.standard_normal((rows, 4))])[0][:, 4:]  # orthogonal to the basis
    assert subspace_overlap(found, complement) == pytest.approx(0.0, abs=1e-6)
    assert input_directions(inside, 10).shape == (rows, 4)  # a rank-4 update has 4 directions, not 10
    half = np.c_[basis[:, :2], complement[:, :2]]  # two directions in, two out
    assert subspace_overlap(found, half) == pytest.approx(0.5, abs=1e-5)
    overlaps = [subspace_overlap(input_directions(rng.standard_normal(shape), 4), basis) for _ in range(200)]
    assert np.mean(overlaps) == pytest.approx(4 / rows, rel=0.2)  # random subspaces: r / d on average


def test_a_lora_models_directions_are_its_a_matrix_span_in_the_input_space(tiny_model: Path) -> None:
    """Paddle's LoRA computes x A B (A: [in, r]): its update's input directions are the columns of A."""
    import paddle

    from job.config.plan import plan_runs
    from job.config.schema import JobConfig
    from job.training.model import load_model
    from job.training.strategies import STRATEGIES
    from job.training.update_rank import input_directions, subspace_overlap

    run = next(r for r in plan_runs(JobConfig(model_name=str(tiny_model), lora_r=4)) if r.strategy.name == "lora")
    paddle.seed(0)
    model = STRATEGIES["lora"].prepare(load_model(str(tiny_model), 15), run)
    layers = [layer for name, layer in model.named_sublayers() if name.endswith("q_proj")]
    rng = np.random.default_rng(0)
    for layer in layers:
        layer.lora_B.set_value(rng.standard_normal(layer.lora_B.shape).astype("float32"))
    analysis = update_analysis({}, model, None, directions=4)
    names = sorted(name for name in analysis.directions if "q_proj" in name)
    assert len(names) == len(layers) == TINY_ERNIE["num_hidden_layers"]
    assert all(name.startswith("ernie.encoder.layers.") for name in analysis.directions)  # the base weight's names
    for name, layer in zip(names, layers, strict=True):
        span, _ = np.linalg.qr(layer.lora_A.numpy().astype(np.float64))
        assert analysis.directions[name].shape == (TINY_ERNIE["hidden_size"], 4)
        assert subspace_overlap(analysis.directions[name], span) == pytest.approx(1.0, abs=1e-4)
    assert input_directions(np.zeros((8, 8)), 4).shape == (8, 0)  # no update, no direction
