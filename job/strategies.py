"""Fine-tuning strategies. A strategy only prepares the loaded model (which parameters train) and
knows how to save what it trained; the training loop is shared (job/train.py).

Adding a strategy: write a class with `name`, `runs`, `label`, `prepare` and `save_artifacts`, add it
to STRATEGIES, and add its name to `StrategyName` in job/config.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from job.config import JobConfig
from job.errors import UserError
from job.model import LoadedModel


@dataclass(frozen=True)
class Run:
    """One row of the report: a strategy with its own settings (e.g. one LoRA rank of a sweep)."""

    key: str  # names results/<key>.json and artifacts/<key>/
    strategy: Strategy
    config: JobConfig  # the job's config with this run's settings

    @property
    def label(self) -> str:
        return self.strategy.label(self.config)


class Strategy(Protocol):
    name: str

    def runs(self, config: JobConfig) -> list[Run]: ...

    def label(self, config: JobConfig) -> str: ...

    def prepare(self, loaded: LoadedModel, config: JobConfig) -> Any: ...

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]: ...


class FullFinetune:
    name = "full_finetune"

    def runs(self, config: JobConfig) -> list[Run]:
        return [Run(self.name, self, config)]

    def label(self, config: JobConfig) -> str:
        return self.name + own_rate_note(config, self.name, prefix=" (", suffix=")")

    def prepare(self, loaded: LoadedModel, config: JobConfig) -> Any:
        for parameter in loaded.model.parameters():
            parameter.stop_gradient = False
        return loaded.model

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        target = folder / "model"
        model.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))
        return [target]


class LoRA:
    name = "lora"

    def runs(self, config: JobConfig) -> list[Run]:
        """One run per (rank, alpha), by rank as the report's rows; a single pair keeps the key `lora`."""
        pairs = sorted(config.lora_pairs())
        return [
            Run(
                self.name if len(pairs) == 1 else f"{self.name}_r{rank}_a{alpha}",
                self,
                config.model_copy(update={"lora_r": rank, "lora_alpha": alpha}),
            )
            for rank, alpha in pairs
        ]

    def label(self, config: JobConfig) -> str:
        rate = own_rate_note(config, self.name, prefix=", ")
        return f"lora (r={config.lora_r}, α={config.lora_alpha}, dropout={config.lora_dropout:g}{rate})"

    def prepare(self, loaded: LoadedModel, config: JobConfig) -> Any:
        from paddlenlp.peft import LoRAConfig, LoRAModel

        _check_targets_match(loaded.model, config.lora_target_modules)
        lora_config = LoRAConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules),
            # PaddleNLP freezes everything but the adapters; the new classifier head must train too.
            trainable_modules=[re.escape(name) for name in loaded.head_parameter_names],
            merge_weights=False,
            tensor_parallel_degree=loaded.model.config.tensor_parallel_degree,
        )
        return LoRAModel(loaded.model, lora_config)

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        adapter, merged = folder / "adapter", folder / "merged"
        model.save_pretrained(str(adapter))  # LoRA weights + trainable head + lora_config.json
        model.merge()  # fold B @ A * scale into the frozen weights, then drop the LoRA layers
        plain = model.restore_original_model()
        plain.save_pretrained(str(merged))
        tokenizer.save_pretrained(str(merged))
        return [adapter, merged]


def own_rate_note(config: JobConfig, strategy: str, prefix: str, suffix: str = "") -> str:
    """`lr=…` for a row label when this strategy has its own learning rate; empty otherwise."""
    own = getattr(config, f"{strategy}_learning_rate")
    return f"{prefix}lr={own:g}{suffix}" if own is not None and own != config.learning_rate else ""


def _check_targets_match(model: Any, patterns: list[str]) -> None:
    names = [name for name, _ in model.named_sublayers()]
    for pattern in patterns:
        if not any(re.fullmatch(pattern, name) for name in names):
            examples = ", ".join([name for name in names if name.endswith("_proj")][:3])
            raise UserError(
                f"config key 'lora_target_modules': {pattern!r} matches no layer of the model "
                f"(layer names look like: {examples or names[-1]})"
            )


STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in (LoRA(), FullFinetune())}


def planned_runs(config: JobConfig) -> list[Run]:
    """Every run of the config, in the order of `strategies` (a LoRA sweep by rank): array task i runs
    the i-th."""
    return [run for name in config.strategies for run in STRATEGIES[name].runs(config)]
