"""On a GPU every host read of a tensor waits for the device, so the training loop reads nothing inside
a step: losses are read once per logging_steps, and clipping never reads its norm. Here the GPU code
path is forced on CPU (job.runtime.device.on_gpu) and every Tensor read is counted; the losses recorded must
equal the CPU path's."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import paddle
import pytest

import job.training.loop
from job.data.batches import encode
from job.data.sampling import draw_samples
from job.data.sources import DataSpec, read_source
from job.errors import TrainingDiverged
from job.runtime import device
from job.runtime.signals import StopRequest
from job.training.loop import TrainSettings, train
from job.training.model import load_model, load_tokenizer
from job.training.strategies import STRATEGIES

READS = ("__float__", "__bool__", "__int__", "__index__", "item", "numpy", "tolist")
LOGGING_STEPS = 4


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for name in READS:
        original = getattr(paddle.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(paddle.Tensor, name, counted)
    return counts


def trained(
    tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch, *, gpu: bool, strategy: str,
    counts: collections.Counter | None = None, eval_steps: int | None = None, evaluate_at=None,
) -> tuple[list[float], list[int]]:  # fmt: skip
    """Train `strategy` for 2 epochs of the tiny model; returns the step losses and, per step, the host
    reads made since the previous step began."""
    monkeypatch.setattr(device, "on_gpu", lambda: gpu)
    tokenizer = load_tokenizer(str(tiny_model))
    splits = draw_samples(read_source(DataSpec(data_dir=str(tnews_dir))), 96, 16, 0)
    rows = encode(splits.train.examples, tokenizer, 32)
    paddle.seed(0)
    loaded = load_model(str(tiny_model), 15)
    model = STRATEGIES[strategy].prepare(loaded, _run_for(strategy))
    settings = TrainSettings(5e-3, 16, 2, 0.01, 0.1, 1.0, seed=0, logging_steps=LOGGING_STEPS, eval_steps=eval_steps)
    per_step: list[int] = []
    original = job.training.loop.accumulated_step

    def step(*args, **kwargs):
        if counts is not None:
            per_step.append(sum(counts.values()))
        return original(*args, **kwargs)

    monkeypatch.setattr(job.training.loop, "accumulated_step", step)
    paddle.seed(0)
    outcome = train(model, rows, settings, pad_id=int(tokenizer.pad_token_id), label=strategy, stop=StopRequest(),
                    evaluate_at=evaluate_at)  # fmt: skip
    monkeypatch.setattr(job.training.loop, "accumulated_step", original)
    return outcome.step_losses, [b - a for a, b in itertools.pairwise(per_step)]


def _run_for(strategy: str):
    from job.config.plan import plan_runs
    from job.config.schema import JobConfig

    return plan_runs(JobConfig(strategies=[strategy], lora_r=4, lora_alpha=8))[0]


@pytest.mark.parametrize("strategy", ["lora", "full_finetune"])
def test_the_gpu_path_reads_the_host_once_per_logging_steps_and_records_the_same_losses(
    tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch, reads: collections.Counter, strategy: str
) -> None:
    cpu_losses, cpu_reads = trained(tiny_model, tnews_dir, monkeypatch, gpu=False, strategy=strategy, counts=reads)
    gpu_losses, gpu_reads = trained(tiny_model, tnews_dir, monkeypatch, gpu=True, strategy=strategy, counts=reads)
    assert len(gpu_losses) == len(cpu_losses) == 12  # 96 rows, batch 16, 2 epochs
    assert gpu_losses == cpu_losses  # the same numbers, read later
    # Step i's entry minus step i-1's: the reads made while step i-1 ran and the loop handled it.
    assert sum(gpu_reads) <= len(gpu_reads) // LOGGING_STEPS + 1
    assert all(count <= 1 for count in gpu_reads)
    assert all(count >= 1 for count in cpu_reads)  # the CPU path reads every step: the counter sees reads


def test_the_gpu_path_clips_with_paddles_clip_that_never_reads_the_norm(
    monkeypatch: pytest.MonkeyPatch, reads: collections.Counter
) -> None:
    monkeypatch.setattr(device, "on_gpu", lambda: True)
    clip = job.training.loop.gradient_clip(1.0)
    assert type(clip) is paddle.nn.ClipGradByGlobalNorm and clip.auto_skip_clip is False
    parameters = [paddle.create_parameter([64, 64], "float32") for _ in range(3)]
    before = sum(reads.values())
    clip([(p, paddle.randn(p.shape) * 10) for p in parameters])
    clip([(p, paddle.randn(p.shape) * 1e-4) for p in parameters])  # within the limit: multiplied by exactly 1
    assert sum(reads.values()) == before


def test_a_nan_found_at_a_later_read_still_names_the_step_where_it_first_appeared(
    tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = job.training.loop.accumulated_step
    steps = iter(range(1, 1000))

    def poisoned(*args, **kwargs):
        loss = original(*args, **kwargs)
        return loss * float("nan") if next(steps) >= 6 else loss  # steps 6 on are NaN

    monkeypatch.setattr(job.training.loop, "accumulated_step", poisoned)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 6;"):
        trained(tiny_model, tnews_dir, monkeypatch, gpu=True, strategy="lora")


def test_scoring_dev_during_training_adds_no_host_read_to_the_steps_between_evaluations(
    tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch, reads: collections.Counter
) -> None:
    """The GPU path with eval_steps 6: the loop asks for evaluations at step 6 only (12 is the last, the
    caller's), and reads the losses once at each logging step and at the evaluation, no more."""
    asked: list[int] = []

    def evaluate_at(step: int) -> bool:
        asked.append(step)
        return False

    losses, per_step = trained(tiny_model, tnews_dir, monkeypatch, gpu=True, strategy="lora", counts=reads,
                               eval_steps=6, evaluate_at=evaluate_at)  # fmt: skip
    assert asked == [6] and len(losses) == 12
    assert all(count <= 1 for count in per_step)
    assert sum(per_step) <= len(per_step) // LOGGING_STEPS + 1 + len(asked)
