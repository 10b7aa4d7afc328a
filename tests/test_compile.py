"""`compile`: the training forward traced into Paddle's static graph (paddle.jit.to_static) trains the
same model to the same numbers as eager execution, and is reproducible from its seed; `auto` leaves it off (measured no
faster on CPU than the job's eager step)."""

from __future__ import annotations

import json
from pathlib import Path

import paddle
import pytest
from click.testing import CliRunner

from job.cli import main
from job.data.batches import encode
from job.data.sampling import draw_samples
from job.data.sources import DataSpec, read_source
from job.runtime.device import resolve_compile
from job.runtime.signals import StopRequest
from job.training.dropout import PADDLE
from job.training.loop import TrainSettings, train
from job.training.model import load_model, load_tokenizer
from job.training.strategies import STRATEGIES
from tests.fixtures import build_tiny_model


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Without dropout, eager and static training draw nothing at random: their losses must agree."""
    return build_tiny_model(tmp_path_factory.mktemp("no-dropout") / "model", dropout=0.0)


def trained(model_dir: Path, tnews_dir: Path, strategy: str, *, compiled: bool) -> tuple[list[float], str, bool]:
    from job.config.plan import plan_runs
    from job.config.schema import JobConfig

    run = plan_runs(JobConfig(strategies=[strategy], lora_r=4, lora_alpha=8, lora_dropout=0.0))[0]
    tokenizer = load_tokenizer(str(model_dir))
    splits = draw_samples(read_source(DataSpec(data_dir=str(tnews_dir))), 96, 16, 0)
    rows = encode(splits.train.examples, tokenizer, 32)
    paddle.seed(0)
    model = STRATEGIES[strategy].prepare(load_model(str(model_dir), 15), run)
    settings = TrainSettings(5e-3, 16, 2, 0.01, 0.1, 1.0, seed=0, logging_steps=4, bucket_window=4, compiled=compiled)
    paddle.seed(0)
    outcome = train(model, rows, settings, pad_id=int(tokenizer.pad_token_id), label=strategy, stop=StopRequest())
    return outcome.step_losses, outcome.dropout, outcome.compiled


def translated_frames() -> int:
    """How many Python frames Paddle's SOT has translated into graphs in this process so far."""
    from paddle.jit.sot.opcode_translator.executor.executor_cache import OpcodeExecutorCache

    return OpcodeExecutorCache().translate_count


@pytest.mark.parametrize("strategy", ["lora", "full_finetune"])
def test_the_static_graph_trains_to_the_eager_losses(no_dropout_model: Path, tnews_dir: Path, strategy: str) -> None:
    before = translated_frames()
    eager, _, eager_compiled = trained(no_dropout_model, tnews_dir, strategy, compiled=False)
    assert translated_frames() == before  # eager: nothing traced
    static, dropout, static_compiled = trained(no_dropout_model, tnews_dir, strategy, compiled=True)
    assert translated_frames() > before  # the forward really went through the translator
    assert (eager_compiled, static_compiled) == (False, True)
    assert len(static) == len(eager) == 12  # 96 rows, batch 16, 2 epochs: batches of several lengths
    assert static == pytest.approx(eager, rel=1e-4)  # the same ops, fused or ordered otherwise: float rounding
    assert eager[-1] < eager[0]  # it learns: the comparison is not between two constants
    assert dropout == PADDLE  # in a static graph the masks are drawn inside the graph, by Paddle


def test_a_static_graph_run_with_dropout_is_reproducible_from_its_seed(tiny_model: Path, tnews_dir: Path) -> None:
    first, _, _ = trained(tiny_model, tnews_dir, "lora", compiled=True)
    second, _, _ = trained(tiny_model, tnews_dir, "lora", compiled=True)
    assert first == second


def test_auto_is_off_and_on_and_off_say_what_they_mean() -> None:
    """auto is off: measured no faster on CPU, not measured on a GPU (resolve_compile says the numbers)."""
    assert (resolve_compile("auto"), resolve_compile("on"), resolve_compile("off")) == (False, True, False)


def test_the_run_records_whether_its_forward_was_compiled(write_config, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(compile="on", num_epochs=1))])
    assert result.exit_code == 0, result.output
    for key in ("lora", "full_finetune"):
        record = json.loads((tmp_path / "out" / "results" / f"{key}.json").read_text(encoding="utf-8"))["result"]
        assert record["compiled"] is True and record["dropout"] == PADDLE
    default = CliRunner().invoke(
        main, ["run", "--config", str(write_config(num_epochs=1, output_dir=str(tmp_path / "auto")))]
    )
    assert default.exit_code == 0, default.output
    record = json.loads((tmp_path / "auto" / "results" / "lora.json").read_text(encoding="utf-8"))["result"]
    assert record["compiled"] is False  # auto


@pytest.mark.parametrize(("written", "read"), [("on", "on"), ("off", "off"), ("auto", "auto"), ("true", "on")])
def test_compile_reads_yaml_on_and_off_as_the_settings_they_name(written: str, read: str) -> None:
    import yaml

    from job.config.schema import JobConfig

    assert JobConfig(**yaml.safe_load(f"compile: {written}")).compile == read
