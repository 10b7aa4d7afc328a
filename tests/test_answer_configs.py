"""The shipped configs and the margin: the config `make run-local` runs by default trains LoRA at a rate
of its own and can show its margin; any other config whose margin is out of reach says in its first line
what it is for; and `job run` warns before anything trains when the plan cannot reach the margin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.schema import load_config
from job.results.power import Reach, config_reach

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def default_config() -> Path:
    return ROOT / re.search(r"^CONFIG \?= (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)[1]


@pytest.mark.timeout(60)
def test_the_default_config_trains_lora_at_its_own_rate_and_reaches_its_margin() -> None:
    config = load_config(default_config())
    assert default_config().name == "tnews_answer.yaml"
    assert config.lora_learning_rate == pytest.approx(10 * config.learning_rate)  # the rule in config-guide.md
    reach = config_reach(config)
    assert isinstance(reach, Reach) and reach.margin_shown, reach
    assert (reach.titles, reach.seeds, reach.margin) == (2000, 8, pytest.approx(0.03))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", CONFIGS, ids=[path.name for path in CONFIGS])
def test_a_shipped_config_reaches_its_margin_or_says_first_what_else_it_is_for(path: Path) -> None:
    reach = config_reach(load_config(path))
    first = path.read_text(encoding="utf-8").splitlines()[0]
    if isinstance(reach, Reach) and reach.margin_shown:
        assert not first.startswith("# Margin out of reach"), first
    else:
        assert re.fullmatch(r"# Margin out of reach \(job plan\): .*\S.{20,}", first), first


@pytest.mark.timeout(300)
def test_job_run_warns_before_anything_trains_when_the_margin_is_out_of_reach(write_config) -> None:
    path = write_config(max_train_samples=32, num_epochs=1, max_eval_samples=60)
    output = CliRunner().invoke(main, ["run", "--config", str(path)]).output
    needed = config_reach(load_config(path)).titles_for_margin
    assert needed > 10_000  # 1 point with one seed: thousands of titles, not 60
    warning = (
        f"warning: margin 1.0 point: out of reach with 60 test titles; about {needed:,} would reach it with 1 seed "
        "(max_eval_samples), or widen `margin`; the runs train anyway (job plan says it all)"
    )
    assert warning in output and output.index(warning) < output.index("parameters trainable")


@pytest.mark.timeout(300)
def test_job_run_says_nothing_of_the_margin_when_the_plan_reaches_it(write_config) -> None:
    path = write_config(max_train_samples=32, num_epochs=1, max_eval_samples=60, margin=40)
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 0 and "parameters trainable" in result.output
    assert "margin" not in result.output.split("parameters trainable")[0]
