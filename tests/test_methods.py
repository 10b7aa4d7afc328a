"""Beyond one LoRA: the baselines (head only, BitFit), LoKr, LoRA's options (all linear layers, rsLoRA,
LoRA+, PiSSA), each trained through the one loop on the tiny model; every compared row gets its own
Holm-adjusted comparison, and the report ranks the rows on the accuracy-cost front."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.config.plan import plan_runs
from job.config.schema import validate_config
from job.data.labels import TNEWS
from job.results.stats import holm
from job.results.verdict import p_text
from job.training.model import count_parameters, load_model
from job.training.strategies import STRATEGIES
from tests.fixtures import TINY_ERNIE
from tests.test_strategies import prepared

HIDDEN, LAYERS, INTERMEDIATE = (
    TINY_ERNIE["hidden_size"],
    TINY_ERNIE["num_hidden_layers"],
    TINY_ERNIE["intermediate_size"],
)
HEAD = HIDDEN * len(TNEWS) + len(TNEWS)  # the classifier: weight and bias
METHODS = ["lora", "lokr", "bitfit", "head_only", "full_finetune"]


def bias_elements(tiny_model: Path) -> int:
    """Every bias of the encoder, counted from the architecture: embeddings LayerNorm; per layer the q,
    k, v and out projections, both MLP projections and both LayerNorms; the pooler."""
    per_layer = 4 * HIDDEN + INTERMEDIATE + HIDDEN + 2 * HIDDEN
    return HIDDEN + LAYERS * per_layer + HIDDEN


def test_head_only_trains_the_classifier_alone(tiny_model: Path) -> None:
    model, _ = prepared(tiny_model, "head_only")
    assert count_parameters(model)[0] == HEAD
    assert {name for name, p in model.named_parameters() if not p.stop_gradient} == {
        "classifier.weight", "classifier.bias"
    }  # fmt: skip


def test_bitfit_trains_every_bias_and_the_head(tiny_model: Path) -> None:
    model, _ = prepared(tiny_model, "bitfit")
    assert count_parameters(model)[0] == bias_elements(tiny_model) + HEAD
    trained = [name for name, p in model.named_parameters() if not p.stop_gradient]
    assert all(name.endswith(".bias") or name.startswith("classifier.") for name in trained)


def test_lokr_trains_its_kronecker_factors_and_the_head(tiny_model: Path) -> None:
    model, run = prepared(tiny_model, "lokr")
    # A 32 x 32 weight factors as (4 x 8) ⊗ (4 x 8) (PaddleNLP's factorization of 32: 4, 8); at dim 4 the
    # first factor w1 is a full 4 x 4 and the second (4 is not below 8 / 2) a full 8 x 8: 80 per layer.
    per_target = 4 * 4 + 8 * 8
    assert run.lora.r == 4 and count_parameters(model)[0] == 2 * LAYERS * per_target + HEAD


def test_all_linear_wraps_exactly_the_six_projections_of_every_layer(tiny_model: Path) -> None:
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    model, run = prepared(tiny_model, "lora", lora_targets="all_linear")
    wrapped = sorted(name.removeprefix("model.") for name, layer in model.named_sublayers()
                     if isinstance(layer, LoRALinear))  # fmt: skip
    expected = sorted(
        f"ernie.encoder.layers.{i}.{part}" for i in range(LAYERS)
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "linear1", "linear2")
    )  # fmt: skip
    assert wrapped == expected
    r = run.lora.r
    adapters = LAYERS * (4 * r * (HIDDEN + HIDDEN) + r * (HIDDEN + INTERMEDIATE) + r * (INTERMEDIATE + HIDDEN))
    assert count_parameters(model)[0] == adapters + HEAD
    assert run.label == "lora (r=4, α=8, dropout=0.1, all linear, lr=5e-05)"


def test_rslora_scales_by_alpha_over_the_square_root_of_r(tiny_model: Path) -> None:
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    for rslora, expected in ((False, 8 / 4), (True, 8 / math.sqrt(4))):
        model, run = prepared(tiny_model, "lora", lora_rslora=rslora)
        scales = {layer.scaling for layer in model.sublayers() if isinstance(layer, LoRALinear)}
        assert scales == {expected} and run.lora.rslora is rslora


def test_lora_plus_gives_b_its_ratio_of_the_learning_rate(tiny_model: Path) -> None:
    """One AdamW step from the same weights and gradients: Adam's first update is the rate times
    m / sqrt(v) = ±1 per element, so B moves `ratio` times as far and A as far as without LoRA+."""
    import paddle

    from job.training.loop import build_optimizer

    def moved(ratio: float) -> tuple[float, float]:
        model, run = prepared(tiny_model, "lora", lora_plus_ratio=ratio, weight_decay=0.0, warmup_ratio=0.0)
        layer = model.model.ernie.encoder.layers[0].self_attn.q_proj
        with paddle.no_grad():
            layer.lora_B.set_value(paddle.full(layer.lora_B.shape, 0.01))  # so that A gets a gradient too
        optimizer, _ = build_optimizer(model, run.settings, 10)
        before_a, before_b = layer.lora_A.numpy().copy(), layer.lora_B.numpy().copy()
        ids = paddle.to_tensor([[1, 8, 9, 10, 2]])
        loss = paddle.nn.functional.cross_entropy(model(input_ids=ids), paddle.to_tensor([3]))
        loss.backward()
        optimizer.step()
        return (float(np.abs(layer.lora_A.numpy() - before_a).max()),
                float(np.abs(layer.lora_B.numpy() - before_b).max()))  # fmt: skip

    plain_a, plain_b = moved(1.0)
    plus_a, plus_b = moved(16.0)
    assert plain_b > 0 and plain_a > 0  # the step moved both (no warm-up: the first rate is the peak)
    assert plus_b == pytest.approx(16 * plain_b, rel=1e-3) and plus_a == pytest.approx(plain_a, rel=1e-3)


def test_pissa_starts_from_the_top_singular_vectors_and_keeps_the_residual(tiny_model: Path) -> None:
    import paddle
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    paddle.seed(0)
    original = load_model(str(tiny_model), len(TNEWS)).model.ernie.encoder.layers[0].self_attn.q_proj.weight.numpy()
    model, run = prepared(tiny_model, "lora", lora_pissa=True)
    layer = model.model.ernie.encoder.layers[0].self_attn.q_proj
    assert isinstance(layer, LoRALinear) and layer.scaling == 1.0 and "PiSSA" in run.label
    model.eval()
    model(input_ids=paddle.to_tensor([[1, 8, 9, 2]]))  # PaddleNLP runs the SVD at the first forward
    product = layer.lora_A.numpy() @ layer.lora_B.numpy()
    u, s, vh = np.linalg.svd(original, full_matrices=False)
    r = run.lora.r
    np.testing.assert_allclose(product, (u[:, :r] * s[:r]) @ vh[:r], atol=1e-5)
    np.testing.assert_allclose(layer.weight.numpy() + product, original, atol=1e-5)


def test_paddlenlp_vera_cannot_learn_from_its_own_initialisation(tiny_model: Path) -> None:
    """Why the job's `vera` starts VeRA its own way (docs/methods.md): PaddleNLP 3.0.0b4's VeRA starts B at
    zero and keeps it frozen, so its trainable scaling vectors b and d get no gradient, ever; and its
    restore_original_model refuses every sublayer but VeRA's."""
    import paddle
    from paddlenlp.peft import VeRAConfig, VeRAModel

    paddle.seed(0)
    loaded = load_model(str(tiny_model), len(TNEWS))
    model = VeRAModel(loaded.model, VeRAConfig(r=4, target_modules=[r".*q_proj"], vera_alpha=4))
    model.mark_only_vera_as_trainable()
    trained = [(name, p) for name, p in model.named_parameters() if not p.stop_gradient]
    assert trained and all("vera_b" in name or "vera_d" in name for name, _ in trained)
    loss = paddle.nn.functional.cross_entropy(model(input_ids=paddle.to_tensor([[1, 8, 9, 2]])), paddle.to_tensor([1]))
    loss.backward()
    assert all(float(p.grad.abs().max()) == 0.0 for _, p in trained)
    with pytest.raises(NotImplementedError):
        model.restore_original_model()


def test_holm_matches_a_worked_example() -> None:
    # p = 0.01, 0.04, 0.03, 0.005 -> sorted 0.005, 0.01, 0.03, 0.04 x 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04
    # -> made non-decreasing: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2]) == [0.2] and holm([0.6, 0.7]) == [1.0, 1.0]


def test_the_options_sweep_as_their_own_rows_with_labels_that_say_them(tiny_model: Path) -> None:
    config = validate_config({"model_name": str(tiny_model), "lora_rslora": [False, True], "lora_plus_ratio": [1, 16],
                              "strategies": ["lora", "lokr"]})  # fmt: skip
    runs = plan_runs(config)
    lora = [run for run in runs if run.strategy.name == "lora"]
    shapes = ("", "_plus16", "_rs", "_rs_plus16")
    assert [run.key for run in lora] == [f"lora_r16_a32{shape}_lr5e-05_s42" for shape in shapes]
    assert [run.label for run in lora][-1] == "lora (r=16, α=32, dropout=0.1, rsLoRA, LoRA+ B×16, lr=5e-05)"
    assert [run.key for run in runs if run.strategy.name == "lokr"] == ["lokr"]  # LoKr takes no LoRA option
    assert len({run.group for run in runs}) == 5


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"lora_targets": "all_linear", "lora_target_modules": [".*q_proj"]}, "both name LoRA's layers"),
        ({"lora_rslora": [False, True], "lora_pissa": True}, "PiSSA's scale is 1"),
        ({"lora_targets": "every_layer"}, "config key 'lora_targets'"),
        ({"lora_plus_ratio": 0}, "config key 'lora_plus_ratio'"),
        ({"lora_rslora": [True, True]}, "the list repeats True"),
        ({"strategies": ["dora"]}, "config key 'strategies'"),
    ],
)
def test_bad_method_keys_are_named(values: dict, fragment: str) -> None:
    from job.errors import UserError

    with pytest.raises(UserError) as caught:
        validate_config(values)
    assert fragment in str(caught.value)


def test_every_method_trains_through_the_one_loop_and_gets_a_holm_adjusted_comparison(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    config = {
        "model_name": str(tiny_model), "data_dir": str(tnews_dir), "max_seq_length": 32, "batch_size": 16,
        "learning_rate": 5e-3, "lora_learning_rate": 2e-2, "lokr_learning_rate": 2e-2, "bitfit_learning_rate": 2e-2,
        "head_only_learning_rate": 5e-2, "num_epochs": 2, "max_train_samples": 240, "max_eval_samples": 60,
        "device": "cpu", "lora_r": 4, "lora_alpha": 8, "eval_batch_size": 32, "strategies": METHODS,
        "output_dir": str(tmp_path / "out"), "save_artifacts": True,
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = {row["strategy"]: row for row in results["headline"]}
    assert list(rows) == METHODS  # one row per strategy, in the registry's order
    assert rows["head_only"]["trainable_params"] == HEAD
    assert rows["bitfit"]["trainable_params"] == bias_elements(tiny_model) + HEAD
    assert rows["lora"]["trainable_params"] == 2 * LAYERS * 4 * (HIDDEN + HIDDEN) + HEAD
    assert rows["lokr"]["trainable_params"] == 2 * LAYERS * 80 + HEAD
    compared = results["comparisons"]
    assert [c["group"] for c in compared] == ["lora", "lokr", "bitfit", "head_only"]
    for c in compared:
        assert c["compared_rows"] == 4 and set(c["selected"]) == {c["group"], "full_finetune"}
        raw, adjusted = c["p_value"], c["p_value_holm"]
        assert adjusted >= raw and adjusted == pytest.approx(holm([x["p_value"] for x in compared])[
            compared.index(c)])  # fmt: skip
        assert f"Holm-adjusted over 4 rows {p_text(adjusted)}" in c["verdict"]
    assert results["comparison"] == compared[0]  # the verdict the report leads with: LoRA's
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "### Accuracy against cost" in report
    chance = 1 / 15 + 2 * math.sqrt(1 / 15 * 14 / 15 / 60)  # two standard errors above chance on 60 titles
    ranked = any(row["test_accuracy"]["mean"] >= chance for row in results["headline"])
    assert ("On the accuracy-cost front" in report) is ranked and ("Not ranked: every row" in report) is not ranked
    for strategy in ("LoKr", "BitFit", "head only"):
        assert f"{strategy} trained " in report
    assert report.count("Verdict") == 4
    # each saved model reloads and predicts; LoKr's merged model gives its adapter's logits
    for folder in ("lokr/model", "bitfit/model", "head_only/model"):
        line = CliRunner(mix_stderr=False).invoke(main, ["predict", "--model", str(out / "artifacts" / folder), "天地"])
        assert line.exit_code == 0 and json.loads(line.stdout)["label"] in TNEWS.names


def test_lokr_merged_weights_give_the_adapters_logits(tiny_model: Path, tmp_path: Path) -> None:
    import paddle
    from paddlenlp.transformers import AutoModelForSequenceClassification

    from job.training.model import load_tokenizer

    model, _ = prepared(tiny_model, "lokr")
    with paddle.no_grad():
        for name, parameter in model.named_parameters():
            if "lokr_w1" in name:  # w1 starts at zero: give the update a value
                parameter.set_value(paddle.full(parameter.shape, 0.05))
    model.eval()
    ids = paddle.to_tensor([[1, 8, 9, 10, 11, 2]])
    expected = model(input_ids=ids).numpy()
    (folder,) = STRATEGIES["lokr"].save_artifacts(model, load_tokenizer(str(tiny_model)), tmp_path)
    merged = AutoModelForSequenceClassification.from_pretrained(str(folder))
    merged.eval()
    np.testing.assert_allclose(merged(input_ids=ids).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, load_model(str(tiny_model), len(TNEWS)).model(input_ids=ids).numpy(), atol=1e-3)


def test_a_pissa_run_saves_the_merged_model_only(tiny_model: Path, tmp_path: Path) -> None:
    from job.training.model import load_tokenizer

    model, _ = prepared(tiny_model, "lora", lora_pissa=True)
    paths = STRATEGIES["lora"].save_artifacts(model, load_tokenizer(str(tiny_model)), tmp_path)
    assert [p.name for p in paths] == ["merged"] and not (tmp_path / "adapter").exists()
    assert not (tmp_path / "peft").exists()  # its base weight is the residual: no PEFT-format adapter


def test_a_method_left_out_of_strategies_is_not_planned() -> None:
    names = [run.strategy.name for run in plan_runs(validate_config({}))]
    assert names == ["lora", "full_finetune"]  # the seed's plan: the new methods run only when listed


def test_a_difference_one_comparison_would_call_significant_is_not_once_holm_counts_every_row() -> None:
    """Full FT right on titles 0-99 of 200; one LoRA row also on 100-119 but not on 0-7 (20 against 8
    discordant titles: exact p = 0.036), another exactly as full FT (p = 1). Alone, the first row is
    significant; compared together, its Holm-adjusted p is 0.071 and it is not, and the verdict prints
    that adjusted p, not the raw one."""
    from job.results.verdict import combine
    from tests.records import records, result

    labels = [i % 15 for i in range(200)]
    full = result("full_finetune", lr=5e-5, seed=1, dev_right=100, test_right=100, labels=labels)
    better = result("lora", lr=5e-4, seed=1, dev_right=120, test_right=112, test_start=8, labels=labels, rank=4)
    same = result("lora", lr=5e-4, seed=1, dev_right=110, test_right=100, labels=labels, rank=8)

    alone = combine(records([better, full], labels)).comparisons
    assert len(alone) == 1 and alone[0].p_value == pytest.approx(0.0357, abs=5e-4)
    assert alone[0].significant and alone[0].p_value_holm == alone[0].p_value
    assert "p = 0.04):" in alone[0].verdict and "Holm" not in alone[0].verdict

    together = combine(records([better, same, full], labels))
    first = next(c for c in together.comparisons if c.group == "lora_r4_a8")
    assert first.compared_rows == 2 and first.p_value_holm == pytest.approx(2 * first.p_value)
    assert first.p_value_holm == pytest.approx(0.0714, abs=5e-4)
    assert not first.significant and "p = 0.04, Holm-adjusted over 2 rows 0.07): no significant difference" in (
        first.verdict
    )
    assert together.comparison == first  # the best LoRA row on dev leads the report


FRONT_LABELS = [i % 15 for i in range(2000)]  # 2,000 titles: accuracy noise of a difference about 2.6 points


def front_run(strategy: str, rank: int | None, accuracy: float, trainable: int, seconds: float, memory: float):
    from tests.records import result

    right = round(accuracy * len(FRONT_LABELS))
    return result(strategy, lr=1e-3, seed=1, dev_right=50, test_right=right, labels=FRONT_LABELS, rank=rank,
                  trainable=trainable, seconds=seconds, memory=memory)  # fmt: skip


def front_of(runs: list) -> dict[str, list[str]]:
    from job.results.front import pareto_front
    from job.results.verdict import headline_rows

    return pareto_front(headline_rows(runs), runs, len(FRONT_LABELS))


def test_a_row_is_dominated_only_by_one_better_beyond_noise_and_worse_on_nothing() -> None:
    runs = [
        front_run("lora", 4, 0.80, 1_000, 10.0, 900.0),  # the front: cheapest of the accurate ones
        front_run("lora", 8, 0.78, 2_000, 12.0, 950.0),  # dominated by r=4: 2 points less is within noise
        front_run("lora", 16, 0.90, 4_000, 14.0, 800.0),  # the front: most accurate
        front_run("full_finetune", None, 0.85, 75_000, 30.0, 2_000.0),  # dominated by r=16
        front_run("lora", 2, 0.60, 500, 9.0, 1_000.0),  # the front: fewest parameters, though least accurate
    ]
    assert front_of(runs) == {"lora_r4_a8": [], "lora_r8_a16": ["lora_r4_a8"], "lora_r16_a32": [],
                              "full_finetune": ["lora_r16_a32"], "lora_r2_a4": []}  # fmt: skip


def test_equal_rows_and_rows_within_noise_dominate_neither() -> None:
    same = [front_run("lora", 4, 0.80, 1_000, 10.0, 900.0), front_run("lora", 8, 0.80, 1_000, 10.0, 900.0),
            front_run("full_finetune", None, 0.80, 1_000, 10.0, 900.0)]  # fmt: skip
    assert front_of(same) == {"lora_r4_a8": [], "lora_r8_a16": [], "full_finetune": []}
    # 1 MB of memory, 3% of time and 1 point of accuracy apart: noise, not a ranking.
    close = [front_run("lora", 4, 0.80, 1_000, 10.0, 900.0), front_run("lora", 8, 0.81, 1_000, 10.3, 901.0),
             front_run("full_finetune", None, 0.795, 1_000, 10.1, 899.0)]  # fmt: skip
    assert front_of(close) == {"lora_r4_a8": [], "lora_r8_a16": [], "full_finetune": []}
    # Beyond the 5% tolerance in time alone, all else equal: dominated.
    slower = [front_run("lora", 4, 0.80, 1_000, 10.0, 900.0), front_run("lora", 8, 0.80, 1_000, 10.6, 900.0)]
    assert front_of(slower) == {"lora_r4_a8": [], "lora_r8_a16": ["lora_r4_a8"]}


def test_the_seeds_spread_decides_what_counts_as_a_time_difference() -> None:
    """BitFit's time over three seeds on a shared machine, 97 ± 74 s, against a row at 60 s: not beaten."""
    from tests.records import result

    runs = []
    for seed, seconds in zip((1, 2, 3), (40.0, 75.0, 176.0), strict=True):  # mean 97, sd 72
        for group_rank, took in ((4, seconds), (8, 60.0)):
            runs.append(result("lora", lr=1e-3, seed=seed, dev_right=50, test_right=1600, labels=FRONT_LABELS,
                               rank=group_rank, trainable=1_000, seconds=took, memory=900.0))  # fmt: skip
    assert front_of(runs) == {"lora_r4_a8": [], "lora_r8_a16": []}


def test_the_published_dev_accuracy_appears_beside_a_run_of_paddlenlps_protocol_only() -> None:
    from job.results.report import render_report
    from job.results.verdict import combine
    from tests.records import records, result

    labels = [i % 15 for i in range(200)]
    runs = [result("lora", lr=5e-4, seed=1, dev_right=100, test_right=100, labels=labels),
            result("full_finetune", lr=3e-5, seed=1, dev_right=114, test_right=110, labels=labels)]  # fmt: skip
    seed_like = records(runs, labels)
    assert "Published:" not in render_report(combine(seed_like))  # 512 training titles: not the protocol
    config = seed_like[0].run.config.model_copy(update={"max_train_samples": None, "max_eval_samples": None})
    full_size = [r.model_copy(update={"run": r.run.model_copy(update={"config": config})}) for r in seed_like]
    report = render_report(combine(full_size))
    assert (
        "Published: PaddleNLP gives ERNIE 3.0 Medium 57.00% TNEWS dev accuracy with full fine-tuning, the best dev "
        "score over its grid" in report
    )
    assert "Measured here: 57.00% dev accuracy (full_finetune (lr=3e-05), chosen on dev) on 200 dev titles" in report
    other = config.model_copy(update={"model_name": "my-model"})
    mine = [r.model_copy(update={"run": r.run.model_copy(update={"config": other})}) for r in seed_like]
    assert "Published:" not in render_report(combine(mine))


@pytest.mark.parametrize("pissa", [False, True])
def test_pissa_trains_its_principal_factors_without_dropout_or_weight_decay(tiny_model: Path, pissa: bool) -> None:
    """PiSSA's A and B start as the weight's top singular part: decay would pull the weight itself toward
    zero and dropout would drop part of it, so neither applies to them (PiSSA's own recipes use
    neither); plain LoRA keeps both, and the head decays either way."""
    from job.training.loop import build_optimizer

    model, run = prepared(tiny_model, "lora", lora_pissa=pissa)
    assert run.lora is not None and run.lora.dropout == (0.0 if pissa else 0.1)
    optimizer, _ = build_optimizer(model, run.settings, 10)
    decays = {name: optimizer._apply_decay_param_fun(p.name) for name, p in model.named_parameters()
              if not p.stop_gradient}  # fmt: skip
    adapters = {name: d for name, d in decays.items() if ".lora_A" in name or ".lora_B" in name}
    assert adapters and all(d is not pissa for d in adapters.values())
    assert decays[next(name for name in decays if name.endswith("classifier.weight"))] is True
    assert not any(decays[name] for name in decays if name.endswith("classifier.bias"))
    assert "dropout=0, PiSSA" in run.label if pissa else "dropout=0.1, lr=" in run.label


def test_the_jobs_vera_learns_trains_only_its_vectors_and_the_head_and_its_merged_model_reloads(
    tiny_model: Path, tnews_dir: Path, tmp_path: Path
) -> None:
    """With B drawn like A, b = 0 and d = 0.1 (the paper's start) the update starts at zero and the
    vectors get gradients: they move in training, and the merged model gives the adapter's logits."""
    import paddle
    from paddlenlp.peft.vera.vera_layers import VeRALinear
    from paddlenlp.transformers import AutoModelForSequenceClassification

    from job.training.model import load_tokenizer
    from tests.test_strategies import train_briefly

    model, run = prepared(tiny_model, "vera")
    assert run.key == "vera" and run.label == "vera (r=4, lr=5e-05)" and run.lora is not None
    assert run.describe().startswith("strategy=vera r=4 lr=5e-05 ")
    layers = [layer for layer in model.model.sublayers() if isinstance(layer, VeRALinear)]
    assert len(layers) == 2 * LAYERS  # q and v of every layer
    trained = {name for name, p in model.named_parameters() if not p.stop_gradient}
    assert trained and all(".vera_b" in n or ".vera_d" in n or "classifier" in n for n in trained)
    assert sum(".vera_b" in n for n in trained) == sum(".vera_d" in n for n in trained) == 2 * LAYERS
    first = layers[0]
    assert float(first.vera_b.abs().max()) == 0.0 and float(first.vera_B.abs().min()) > 0
    np.testing.assert_allclose(first.vera_d.numpy(), 0.1)
    before = {id(layer): layer.vera_b.numpy().copy() for layer in layers}
    train_briefly(model, tiny_model, tnews_dir)
    moved = [float(np.abs(layer.vera_b.numpy() - before[id(layer)]).max()) for layer in layers]
    assert all(change > 0 for change in moved)  # every b learned (PaddleNLP's own start: none would)
    model.eval()
    ids = paddle.to_tensor([[1, 8, 9, 10, 11, 2]])
    expected = model(input_ids=ids).numpy()
    (folder,) = STRATEGIES["vera"].save_artifacts(model, load_tokenizer(str(tiny_model)), tmp_path)
    assert folder.name == "model" and not list(folder.glob("*.pdparams"))
    merged = AutoModelForSequenceClassification.from_pretrained(str(folder))
    merged.eval()
    np.testing.assert_allclose(merged(input_ids=ids).numpy(), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, load_model(str(tiny_model), len(TNEWS)).model(input_ids=ids).numpy(), atol=1e-4)
