"""One fully resolved run of the plan (job.config.plan makes them) and the shape every strategy shares
(job.training.strategies registers them). Below both, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from job.training.loop import TrainSettings
from job.training.model import LoadedModel


def rate_text(rate: float) -> str:
    """A learning rate as keys, labels and results write it: Python's shortest text that reads back as
    the same float (5e-05, 0.0005, 0.00050000001), so two rates never share a run key. For rates of up
    to 6 significant figures it is the text `:g` gave."""
    return repr(float(rate))


class Strategy(Protocol):
    """What the plan, the loop, the verdict, the report and the bench ask of a strategy."""

    name: str
    title: str  # how the config reference names it: "LoRA's own batch size"
    uses_lora: bool  # its runs take a LoRA shape (rank, alpha), one headline row per shape
    is_baseline: bool  # the strategy every other one is compared with
    trains_every_weight: bool  # its backward computes every weight's gradient (6 x params x tokens of FLOPs)

    def label(self, run: Run) -> str: ...

    def prepare(self, loaded: LoadedModel, run: Run) -> Any: ...

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]: ...


@dataclass(frozen=True)
class LoRASettings:
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    index: int  # position in the plan: array task i trains run i
    key: str  # names results/<key>.json and artifacts/<key>/
    group: str  # the headline row this run belongs to (same strategy and LoRA shape)
    strategy: Strategy
    settings: TrainSettings  # learning rate, batch size, seed, epochs, optimizer and batching
    eval_batch_size: int | str  # "auto" until the device is known (job.training.device.resolve_eval_batch_size)
    lora: LoRASettings | None = None

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def learning_rate(self) -> float:
        return self.settings.learning_rate

    @property
    def label(self) -> str:
        """The row label: strategy, LoRA shape and learning rate (not the seed: seeds share a row)."""
        return self.strategy.label(self)

    def describe(self) -> str:
        """Every setting of the run on one line (`job plan`)."""
        s = self.settings
        lora = f"r={self.lora.r} alpha={self.lora.alpha} dropout={self.lora.dropout:g} " if self.lora else ""
        return (
            f"strategy={self.strategy.name} {lora}lr={s.learning_rate:g} seed={s.seed} batch_size={s.batch_size} "
            f"epochs={s.num_epochs} weight_decay={s.weight_decay:g} warmup_ratio={s.warmup_ratio:g} "
            f"max_grad_norm={s.max_grad_norm:g} length_bucket_window={s.bucket_window}"
        )
