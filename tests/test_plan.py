"""The run plan: a grid config expands into fully resolved runs with stable keys; `job plan` prints them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.plan import plan_runs
from job.config.schema import validate_config
from job.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

GRID = {
    "seed": [42, 43, 44],
    "lora_learning_rate": [1e-4, 5e-4, 1e-3],
    "full_finetune_learning_rate": [3e-5, 5e-5],
}


def test_a_grid_yields_one_run_per_strategy_rate_and_seed() -> None:
    runs = plan_runs(validate_config(GRID))
    assert len(runs) == 3 * 3 + 2 * 3
    assert [run.index for run in runs] == list(range(15))
    assert runs[0].key == "lora_r16_a32_lr0.0001_s42" and runs[1].key == "lora_r16_a32_lr0.0001_s43"
    assert runs[8].key == "lora_r16_a32_lr0.001_s44"
    assert runs[9].key == "full_finetune_lr3e-05_s42" and runs[14].key == "full_finetune_lr5e-05_s44"
    assert {run.group for run in runs} == {"lora", "full_finetune"}
    third = runs[3]  # every setting resolved on the run itself, no lists left
    assert (third.strategy.name, third.learning_rate, third.seed) == ("lora", 5e-4, 42)
    assert (third.lora.r, third.lora.alpha, third.lora.dropout) == (16, 32, 0.1)
    assert third.settings.batch_size == 8 and third.eval_batch_size == "auto"  # resolved once the device is known
    assert third.label == "lora (r=16, α=32, dropout=0.1, lr=0.0005)"


def test_the_seed_config_keeps_its_keys() -> None:
    assert [run.key for run in plan_runs(validate_config({}))] == ["lora", "full_finetune"]


def test_a_rank_sweep_groups_by_rank() -> None:
    runs = plan_runs(validate_config({"lora_r": [8, 4], "seed": [1, 2], "strategies": ["lora"]}))
    assert [run.key for run in runs] == [
        "lora_r4_a32_lr5e-05_s1", "lora_r4_a32_lr5e-05_s2", "lora_r8_a32_lr5e-05_s1", "lora_r8_a32_lr5e-05_s2",
    ]  # fmt: skip
    assert [run.group for run in runs] == ["lora_r4_a32", "lora_r4_a32", "lora_r8_a32", "lora_r8_a32"]


def test_data_seed_defaults_to_the_first_seed() -> None:
    assert validate_config({"seed": [7, 8]}).sample_seed() == 7
    assert validate_config({"seed": [7, 8], "data_seed": 3}).sample_seed() == 3


def test_plan_command_prints_every_run_and_the_array_size(tmp_path) -> None:
    config = tmp_path / "grid.yaml"
    config.write_text("seed: [42, 43]\nlora_learning_rate: [1.0e-4, 5.0e-4]\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["plan", "--config", str(config), "--set", "strategies=[lora, full_finetune]"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "array size: 6"  # last, for scripts; before it what the comparison can show
    assert lines[6] == "work: 6 runs, 64 optimizer steps each, 384 in all; each scores up to 256 dev and 256 test " + (
        "titles" + CARVE
    )
    assert lines[7].startswith("time: no estimate (no earlier run of these strategies on ernie-3.0-medium-zh in ")
    assert lines[8].startswith("comparison: 256 test titles x 2 seeds: finds no true difference with 80% power")
    assert lines[9].startswith("two seeds: the interval's critical value is widened about 2.7x")
    assert lines[0].split()[:3] == ["0", "lora_r16_a32_lr0.0001_s42", "strategy=lora"]
    assert "lr=0.0001 seed=42 batch_size=8" in lines[0]
    assert lines[5].split()[:2] == ["5", "full_finetune_lr5e-05_s43"]
    only = CliRunner().invoke(main, ["plan", "--config", str(config), "--strategy", "full_finetune"])
    assert only.output.splitlines()[-2:] == ["comparison: none (no strategy besides the baseline)", "array size: 2"]
    bad = CliRunner().invoke(main, ["plan", "--set", "seed=[1, 1]"])
    assert bad.exit_code == 2 and "config key 'seed'" in bad.output


def test_plan_spells_each_lora_option_as_its_own_setting() -> None:
    result = CliRunner().invoke(main, ["plan", "--set", "lora_targets=[attention_qv, all_linear]",
                                       "--set", "lora_rslora=true", "--set", "lora_plus_ratio=16"])  # fmt: skip
    assert result.exit_code == 0, result.output
    first, second = result.output.splitlines()[:2]
    assert " dropout=0.1 rslora=true plus_ratio=16 lr=5e-05 " in first and "targets=" not in first
    assert " dropout=0.1 targets=all_linear rslora=true plus_ratio=16 lr=5e-05 " in second
    assert "_all_linear" not in second.split("strategy=", 1)[1]  # the key keeps its suffix; the settings do not


@pytest.mark.timeout(30)
def test_a_plan_of_more_than_10000_runs_is_refused_before_it_is_built() -> None:
    at_limit = validate_config({"strategies": ["lora", "full_finetune"], "seed": list(range(5000))})
    assert len(plan_runs(at_limit)) == 10_000
    huge = validate_config({"strategies": ["lora"], "learning_rate": [1e-5 * (i + 1) for i in range(3000)],
                            "seed": list(range(300))})  # fmt: skip
    with pytest.raises(UserError) as caught:
        plan_runs(huge)  # 900,000 runs: 25 s to build and print
    assert str(caught.value).startswith("the plan has more than 10,000 runs (lora: 3,000 rates x 300 seeds = 900,000)")
    over = validate_config({"strategies": ["lora", "full_finetune"], "seed": list(range(5001))})
    with pytest.raises(UserError, match=r"\(5,001 runs before it, then full_finetune: 5,001 seeds = 5,001\)"):
        plan_runs(over)


def test_lokr_runs_are_keyed_by_the_dimension_it_uses_and_not_by_alpha() -> None:
    config = validate_config({"strategies": ["lokr", "full_finetune"], "lora_r": [8, 16], "lora_alpha": [16, 32],
                              "seed": [1, 2]})  # fmt: skip
    lokr = [run for run in plan_runs(config) if run.strategy.name == "lokr"]
    assert [run.key for run in lokr] == ["lokr_d8_lr5e-05_s1", "lokr_d8_lr5e-05_s2", "lokr_d16_lr5e-05_s1",
                                         "lokr_d16_lr5e-05_s2"]  # fmt: skip
    assert lokr[0].describe().startswith("strategy=lokr dim=8 lr=5e-05 ") and "alpha" not in lokr[0].describe()
    # Two alphas at one rank are one LoKr run (it does not read alpha), and two LoRA rows.
    same_rank = validate_config({"strategies": ["lora", "lokr"], "lora_r": [16, 16], "lora_alpha": [16, 32]})
    assert [run.key for run in plan_runs(same_rank)] == ["lora_r16_a16_lr5e-05_s42", "lora_r16_a32_lr5e-05_s42",
                                                        "lokr"]  # fmt: skip


def test_lokrs_dimension_splits_the_second_factor_only_below_half_its_larger_side() -> None:
    """PaddleNLP 3.0.0b4's LoKrLinear on ERNIE 3.0 Medium's shapes, as docs/methods.md says."""
    from paddlenlp.peft.lokr.lokr_layers import LoKrLinear

    def factors(inputs: int, outputs: int, dim: int) -> dict[str, tuple[int, ...]]:
        layer = LoKrLinear(in_features=inputs, out_features=outputs, lokr_dim=dim)
        return {name: tuple(p.shape) for name, p in layer.named_parameters() if name.startswith("lokr")}

    assert factors(768, 768, 16) == factors(768, 768, 64) == {"lokr_w1": (24, 24), "lokr_w2": (32, 32)}
    assert factors(768, 768, 8) == {"lokr_w1": (24, 24), "lokr_w2_a": (32, 8), "lokr_w2_b": (8, 32)}
    assert factors(768, 3072, 16)["lokr_w2_a"] == (64, 16) and "lokr_w2" in factors(768, 3072, 32)


CARVE = " (fewer when the data has fewer; a test split carved from train takes at most half of it)"


@pytest.mark.timeout(60)
def test_the_plan_states_the_work_its_runs_do_whatever_the_device() -> None:
    from job.config.plan import plan_work
    from job.config.schema import load_config, validate_config

    config = load_config(ROOT / "configs" / "tnews_answer.yaml")
    assert plan_work(plan_runs(config), config.max_eval_samples) == (
        "work: 16 runs, 1,875 optimizer steps each, 30,000 in all; each scores up to 2,000 dev and 2,000 test titles"
        + CARVE
    )  # 10,000 titles / batch 16 = 625 a epoch, x 3 epochs
    odd = validate_config({"max_train_samples": [1000, 100], "batch_size": 16, "num_epochs": 3, "seed": [1, 2]})
    assert plan_work(plan_runs(odd), odd.max_eval_samples) == (
        "work: 8 runs, 21 to 189 steps, 840 in all; each scores up to 256 dev and 256 test titles" + CARVE
    )  # a partial last batch is a step: 63 and 7 a epoch
    everything = validate_config({"max_train_samples": None})
    assert "known once the data is read" in plan_work(plan_runs(everything), None)


@pytest.mark.timeout(60)
def test_the_plan_estimates_its_time_from_earlier_runs_speed_and_says_when_it_cannot(tmp_path: Path) -> None:
    """The example's 16 records (8 seeds of each strategy on the stand-in, on CPU) give each strategy's median
    samples/s; the plan's 1,875 steps of 16 titles a run over it is its time. An empty folder: no guess."""
    import json
    import shutil
    import statistics

    from click.testing import CliRunner

    from job.cli import main
    from job.output.log import duration

    example = ROOT / "docs" / "example-report"
    shutil.copytree(example / "results", tmp_path / "out" / "results")
    records = [json.loads(path.read_text(encoding="utf-8")) for path in (tmp_path / "out" / "results").iterdir()]
    speed = {
        name: statistics.median(r["result"]["samples_per_second"] for r in records if r["result"]["strategy"] == name)
        for name in ("lora", "full_finetune")
    }
    args = ["plan", "--config", str(ROOT / "configs" / "tnews_answer.yaml"), "--set",
            "model_name=../shared/data/ernie-standin-tnews", "--set", f"output_dir={tmp_path / 'out'}"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    each = {name: 1875 * 16 / speed[name] for name in speed}
    total = 8 * sum(each.values())
    assert (f"time: about {each['lora']:.0f} s a lora run, {each['full_finetune']:.0f} s a full_finetune run: "
            f"{duration(total)} of training for the plan, one run at a time, from the speed of earlier runs on "
            f"cpu in {tmp_path / 'out'} (loading and evaluation come on top)") in result.output  # fmt: skip
    priced = CliRunner().invoke(main, [*args, "--set", "price_per_hour=2.5"])
    assert f"{duration(total)} of training for the plan, about {total / 3600 * 2.5:.2f} USD at 2.50 USD an hour," in (
        priced.output
    )
    empty = CliRunner().invoke(main, [*args[:-1], f"output_dir={tmp_path / 'none'}"])
    assert "time: no estimate (no earlier run of these strategies on ../shared/data/ernie-standin-tnews in " in (
        empty.output
    )
    assert not (tmp_path / "none").exists()  # the plan writes nothing


@pytest.mark.timeout(200)
def test_max_steps_trains_exactly_that_many_steps_across_epochs_and_equals_whole_epochs_when_they_match(
    write_config, tmp_path: Path
) -> None:
    """300 titles in batches of 16: 19 steps an epoch. max_steps 25 is one epoch and 6 steps of the next;
    max_steps 38 is the same training as num_epochs 2, loss for loss. A config without the key keeps the
    hash its records were made with."""
    import json

    def losses(name: str, **values) -> dict:
        config = write_config(strategies=["lora"], output_dir=str(tmp_path / name), **values)
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert result.exit_code == 0, result.output[-2000:]
        return json.loads((tmp_path / name / "results" / "lora.json").read_text(encoding="utf-8"))["result"]

    cut = losses("cut", max_steps=25, num_epochs=5)
    assert cut["steps"] == len(cut["step_losses"]) == 25
    epochs, steps = losses("epochs", num_epochs=2), losses("steps", max_steps=38, num_epochs=7)
    assert epochs["steps"] == steps["steps"] == 38 and epochs["step_losses"] == steps["step_losses"]
    plan = CliRunner().invoke(main, ["plan", "--config", str(write_config(max_steps=25))])
    assert "work: 2 runs, 25 optimizer steps each, 50 in all" in plan.output and "max_steps=25 " in plan.output
    example = ROOT / "docs" / "example-report" / "results"
    record = json.loads(next(example.glob("*.json")).read_text(encoding="utf-8"))["run"]
    from job.config.schema import validate_config

    assert validate_config(record["config"]).config_hash() == record["config_hash"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["lora", "full_finetune"])
def test_gradient_accumulation_gives_the_whole_batchs_steps_within_fp32_rounding(
    write_config, tmp_path: Path, strategy: str
) -> None:
    """Dropout off (masks of micro-batches are other draws): batches of 16 cut into 4 micro-batches of 4 (the
    last batch of 12 into 3s) train the same steps as whole batches, loss for loss within fp32 rounding."""
    import json

    import numpy as np

    from tests.fixtures import build_tiny_model

    model = build_tiny_model(tmp_path / "no-dropout", dropout=0.0)

    def trained(name: str, **values) -> dict:
        config = write_config(model_name=str(model), strategies=[strategy], lora_dropout=0.0, num_epochs=2,
                              output_dir=str(tmp_path / name), **values)  # fmt: skip
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert result.exit_code == 0, result.output[-2000:]
        return json.loads((tmp_path / name / "results" / f"{strategy}.json").read_text(encoding="utf-8"))["result"]

    whole, cut = trained("whole"), trained("cut", gradient_accumulation_steps=4)
    assert whole["steps"] == cut["steps"] == 38
    np.testing.assert_allclose(cut["step_losses"], whole["step_losses"], rtol=2e-5)
    assert cut["dev"]["predictions"] == whole["dev"]["predictions"]
    assert len(set(whole["step_losses"])) > 30  # the steps moved the weights
