"""What serving a run's model costs (job.training.serving): every run records each form it can be served
in, the report tabulates them, and LoRA's merged and unmerged forms agree, which a merge broken by hand
(its scale off by one) fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import run_tiny

pytestmark = pytest.mark.timeout(300)


def lora_model(tiny_model: Path):
    """A tiny LoRA model whose B is not zero (a trained adapter), and test rows for it."""
    import paddle

    from job.config.plan import plan_runs
    from job.config.schema import JobConfig
    from job.data.batches import Encoded
    from job.training.model import load_model
    from job.training.strategies import STRATEGIES

    run = next(r for r in plan_runs(JobConfig(model_name=str(tiny_model), lora_r=4)) if r.strategy.name == "lora")
    paddle.seed(0)
    model = STRATEGIES["lora"].prepare(load_model(str(tiny_model), 15), run)
    rng = np.random.default_rng(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.set_value(rng.standard_normal(parameter.shape).astype("float32") * 0.5)
    rows = [Encoded(input_ids=[1, *rng.integers(5, 60, size=int(n)).tolist(), 2], token_type_ids=[0] * (int(n) + 2),
                    label=0) for n in rng.integers(3, 20, size=80)]  # fmt: skip
    return model, rows


def test_lora_merged_and_unmerged_agree_and_a_merge_off_by_one_in_its_scale_does_not(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    from job.training.serving import merge_agreement

    model, rows = lora_model(tiny_model)
    (agreement,) = merge_agreement(model, rows, 0, "fp32")
    assert agreement.precision == "fp32" and agreement.titles == 80
    assert agreement.max_logit_difference < 1e-4 and agreement.prediction_agreement == 1.0

    real = LoRALinear.merge

    def off_by_one(self) -> None:  # the update folded in with scale + 1
        self.scaling += 1.0
        try:
            real(self)
        finally:
            self.scaling -= 1.0

    monkeypatch.setattr(LoRALinear, "merge", off_by_one)
    (broken,) = merge_agreement(model, rows, 0, "fp32")
    assert broken.max_logit_difference > 100 * max(agreement.max_logit_difference, 1e-6)
    monkeypatch.undo()
    (again,) = merge_agreement(model, rows, 0, "fp32")
    assert again == agreement  # the exact weights are back after each merge


def test_each_form_is_timed_and_a_model_without_an_adapter_has_one_form(tiny_model: Path) -> None:
    from job.training.model import load_model
    from job.training.serving import BATCH, serving_costs

    model, rows = lora_model(tiny_model)
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    costs = serving_costs(model, rows, 0)
    assert [c.form for c in costs] == ["unmerged", "merged"]
    for cost in costs:
        assert cost.ms_per_title > 0 and cost.ms_per_batch > 0 and cost.titles_per_second > 0
        assert cost.titles_per_second == pytest.approx(BATCH / (cost.ms_per_batch / 1000), rel=1.0)  # same scale
    assert all(np.array_equal(before[name], p.numpy()) for name, p in model.named_parameters())
    assert model.training  # left as it was found
    plain = load_model(str(tiny_model), 15).model
    assert [c.form for c in serving_costs(plain, rows, 0)] == ["model"]


def test_a_run_records_serving_costs_and_the_report_tabulates_them(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, max_train_samples=64, max_eval_samples=40, num_epochs=1)
    runs = {r["strategy"]: r for r in json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]}
    assert [f["form"] for f in runs["lora"]["serving"]] == ["unmerged", "merged"]
    assert [f["form"] for f in runs["full_finetune"]["serving"]] == ["model"]
    (agreement,) = runs["lora"]["merge_agreement"]
    assert agreement["titles"] == 40 and agreement["prediction_agreement"] == 1.0
    assert runs["full_finetune"]["merge_agreement"] == []
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    section = report.split("### Serving\n\n", 1)[1].split("\n### ", 1)[0]
    unmerged = runs["lora"]["serving"][0]
    assert (f"| adapter unmerged | {unmerged['ms_per_title']:.2f} | {unmerged['ms_per_batch']:.1f} | "
            f"{unmerged['titles_per_second']:,.0f} |") in section  # fmt: skip
    assert "| as trained |" in section and "equal predictions on 40 test titles" in section

    (tmp_path / "off").mkdir()
    off = run_tiny(tmp_path / "off", tiny_model, tnews_dir, max_train_samples=64, max_eval_samples=40, num_epochs=1,
                   serving=False)  # fmt: skip
    assert "### Serving" not in (off / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")


def test_after_a_bf16_run_the_forms_are_compared_at_bf16_too(tiny_model: Path) -> None:
    """On a GPU the second pass runs under bf16 autocast, where merging rounds the weights; on CPU Paddle's
    autocast stays fp32, so here both passes agree as closely (the path, not the rounding, is tested)."""
    from job.training.serving import merge_agreement

    model, rows = lora_model(tiny_model)
    found = merge_agreement(model, rows, 0, "bf16")
    assert [a.precision for a in found] == ["fp32", "bf16"]
    assert all(a.titles == 80 and a.prediction_agreement == 1.0 for a in found)
    assert merge_agreement(model, rows, 0, "fp32")[0] == found[0]
