"""One fully resolved run of the plan (job.config.plan makes them) and the shape every strategy shares
(job.training.strategies registers them). Below both, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from job.training.loop import TrainSettings
from job.training.model import LoadedModel


def size_text(rows: int | None) -> str:
    """A training size in labels: `2,000 rows`, `all rows`."""
    return "all rows" if rows is None else f"{rows:,} rows"


def size_key(rows: int | None) -> str:
    """A training size in run keys and groups: `_n2000`, `_nall`."""
    return f"_n{'all' if rows is None else rows}"


def rate_text(rate: float) -> str:
    """A learning rate as keys, labels and results write it: Python's shortest text that reads back as
    the same float (5e-05, 0.0005, 0.00050000001), so two rates never share a run key. For rates of up
    to 6 significant figures it is the text `:g` gave."""
    return repr(float(rate))


class Strategy(Protocol):
    """What the plan, the loop, the verdict, the report and the bench ask of a strategy."""

    name: str
    title: str  # how the report and the config reference name it: "LoRA", "LoRA's own batch size"
    # Its runs take an adapter shape (rank, alpha, target layers) plus these LoRA options, one headline
    # row per distinct shape; None: no adapter.
    adapter_options: tuple[str, ...] | None
    is_baseline: bool  # the strategy every other one is compared with
    in_default_plan: bool  # runs when the config does not list `strategies`
    # Passes over the encoder's matmuls a training step makes: 3 (forward, input and weight gradients),
    # 2 (frozen weights still pass gradients down: LoRA, BitFit), 1 (forward only: the head alone trains).
    step_passes: int

    def label(self, run: Run) -> str: ...

    # Adapter strategies only (adapter_options is not None): what run keys and `job plan` spell of a shape.
    def shape_key(self, lora: LoRASettings) -> str: ...  # "_r16_a32_all_linear": the settings it uses

    def shape_settings(self, lora: LoRASettings) -> str: ...  # "r=16 alpha=32 dropout=0.1 targets=all_linear"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any: ...

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]: ...


@dataclass(frozen=True)
class LoRASettings:
    """An adapter's shape: rank, alpha, dropout and target layers, and LoRA's options (each default
    is plain LoRA; LoKr reads the rank, alpha and targets only)."""

    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]
    targets: str = "attention_qv"  # the preset the target layers came from ("custom": lora_target_modules)
    rslora: bool = False  # scale alpha / sqrt(r) instead of alpha / r
    plus_ratio: float = 1.0  # LoRA+: B's learning rate is this many times the run's
    pissa: bool = False  # A and B from the frozen weight's top-r SVD (the weight keeps the residual)

    def suffix(self) -> str:
        """What a key and a group add for the options that are not plain LoRA: `_all_rs_plus16_pissa`."""
        parts = [self.targets if self.targets not in ("attention_qv", "custom") else "",
                 "rs" if self.rslora else "", f"plus{self.plus_ratio:g}" if self.plus_ratio != 1 else "",
                 "pissa" if self.pissa else ""]  # fmt: skip
        return "".join(f"_{part}" for part in parts if part)

    def settings_text(self) -> str:
        """The options in `job plan`'s line, each as key=value: ` targets=all_linear rslora=true`."""
        parts = [f"targets={self.targets}" if self.targets != "attention_qv" else "",
                 "rslora=true" if self.rslora else "",
                 f"plus_ratio={self.plus_ratio:g}" if self.plus_ratio != 1 else "",
                 "pissa=true" if self.pissa else ""]  # fmt: skip
        return "".join(f" {part}" for part in parts if part)

    def options_text(self) -> str:
        """The options in a row label: `, all linear, rsLoRA, LoRA+ B×16, PiSSA`; empty for plain LoRA."""
        parts = [self.targets.replace("_", " ") if self.targets not in ("attention_qv", "custom") else "",
                 "rsLoRA" if self.rslora else "", f"LoRA+ B×{self.plus_ratio:g}" if self.plus_ratio != 1 else "",
                 "PiSSA" if self.pissa else ""]  # fmt: skip
        return "".join(f", {part}" for part in parts if part)


@dataclass(frozen=True)
class Run:
    index: int  # position in the plan: array task i trains run i
    key: str  # names results/<key>.json and artifacts/<key>/
    group: str  # the headline row this run belongs to (same strategy and LoRA shape)
    strategy: Strategy
    settings: TrainSettings  # learning rate, batch size, seed, epochs, optimizer and batching
    eval_batch_size: int | str  # "auto" until the device is known (job.runtime.device.resolve_eval_batch_size)
    lora: LoRASettings | None = None
    train_rows: int | None = None  # the training size drawn (max_train_samples; None: every row)
    sized: bool = False  # the config trains several sizes: label and key say this run's

    @property
    def seed(self) -> int:
        return self.settings.seed

    @property
    def learning_rate(self) -> float:
        return self.settings.learning_rate

    @property
    def label(self) -> str:
        """The row label: strategy, LoRA shape and learning rate (not the seed: seeds share a row), and
        the training size when several are trained."""
        label = self.strategy.label(self)
        if not self.sized:
            return label
        assert label.endswith(")"), label  # every strategy's label closes its settings in brackets
        return f"{label[:-1]}, {size_text(self.train_rows)})"

    def describe(self) -> str:
        """Every setting of the run on one line (`job plan`)."""
        s = self.settings
        lora = f"{self.strategy.shape_settings(self.lora)} " if self.lora else ""
        return (
            f"strategy={self.strategy.name} {lora}lr={s.learning_rate:g} seed={s.seed} batch_size={s.batch_size} "
            + (f"max_steps={s.max_steps} " if s.max_steps else f"epochs={s.num_epochs} ")
            + f"weight_decay={s.weight_decay:g} warmup_ratio={s.warmup_ratio:g} "
            f"max_grad_norm={s.max_grad_norm:g} length_bucket_window={s.bucket_window}"
            + (f" eval_steps={s.eval_steps}" if s.eval_steps else "")
            + (f" gradient_accumulation_steps={s.accumulation}" if s.accumulation > 1 else "")
            + (f" train_rows={self.train_rows if self.train_rows is not None else 'all'}" if self.sized else "")
        )
