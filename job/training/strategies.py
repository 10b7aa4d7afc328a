"""Fine-tuning strategies: the registry of strategy names. A strategy only prepares the loaded model
(which parameters train), names its rows, and knows how to save what it trained; the training loop is
shared (job/training/loop.py) and the run plan (job/config/plan.py) gives each run its settings.

Adding a strategy: write a class with the attributes and methods of `job.training.runs.Strategy`, and add it
to STRATEGIES. The config's `strategies` choices, the CLI's `--strategy` choices and the plan derive
from STRATEGIES; `<name>_learning_rate` and `<name>_batch_size` config keys give it its own rate and
batch size.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from job.errors import UserError
from job.training.model import LoadedModel
from job.training.runs import Run, Strategy, rate_text


class LoRA:
    name = "lora"
    title = "LoRA"
    uses_lora = True
    is_baseline = False
    trains_every_weight = False  # frozen weights: input gradients only (4 x params x tokens)

    def label(self, run: Run) -> str:
        assert run.lora is not None
        lora = run.lora
        return f"lora (r={lora.r}, α={lora.alpha}, dropout={lora.dropout:g}, lr={rate_text(run.learning_rate)})"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any:
        from paddlenlp.peft import LoRAConfig, LoRAModel

        assert run.lora is not None
        check_targets_match([name for name, _ in loaded.model.named_sublayers()], run.lora.target_modules)
        lora_config = LoRAConfig(
            r=run.lora.r,
            lora_alpha=run.lora.alpha,
            lora_dropout=run.lora.dropout,
            target_modules=list(run.lora.target_modules),
            # PaddleNLP freezes everything but the adapters; the new classifier head must train too.
            trainable_modules=[re.escape(name) for name in loaded.head_parameter_names],
            merge_weights=False,
            tensor_parallel_degree=loaded.model.config.tensor_parallel_degree,
            base_model_name_or_path=loaded.source,  # the saved adapter says what it adapts
        )
        return LoRAModel(loaded.model, lora_config)

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        adapter, merged = folder / "adapter", folder / "merged"
        model.save_pretrained(str(adapter))  # LoRA weights + trainable head + lora_config.json + config.json
        tokenizer.save_pretrained(str(adapter))  # `job predict` reads any saved folder the same way
        model.merge()  # fold B @ A * scale into the frozen weights, then drop the LoRA layers
        plain = model.restore_original_model()
        plain.save_pretrained(str(merged), safe_serialization=True)  # safetensors: loading runs no code
        tokenizer.save_pretrained(str(merged))
        return [adapter, merged]


class FullFinetune:
    name = "full_finetune"
    title = "full FT"
    uses_lora = False
    is_baseline = True
    trains_every_weight = True

    def label(self, run: Run) -> str:
        return f"{self.name} (lr={rate_text(run.learning_rate)})"

    def prepare(self, loaded: LoadedModel, run: Run) -> Any:
        for parameter in loaded.model.parameters():
            parameter.stop_gradient = False
        return loaded.model

    def save_artifacts(self, model: Any, tokenizer: Any, folder: Path) -> list[Path]:
        target = folder / "model"
        model.save_pretrained(str(target), safe_serialization=True)  # safetensors: loading runs no code
        tokenizer.save_pretrained(str(target))
        return [target]


def check_targets_match(names: list[str], patterns: tuple[str, ...] | list[str]) -> None:
    """Every pattern must match at least one layer name, or LoRA would silently train less."""
    for pattern in patterns:
        if not any(re.fullmatch(pattern, name) for name in names):
            examples = ", ".join([name for name in names if name.endswith("_proj")][:3])
            raise UserError(
                f"config key 'lora_target_modules': {pattern!r} matches no layer of the model "
                f"(layer names look like: {examples or names[-1]})"
            )


# The one place strategy names are written; the order is the report's row order.
STRATEGIES: dict[str, Strategy] = {strategy.name: strategy for strategy in (LoRA(), FullFinetune())}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def baseline() -> Strategy:
    """The strategy every other one is compared with (full fine-tuning)."""
    return next(strategy for strategy in STRATEGIES.values() if strategy.is_baseline)


def compared() -> list[Strategy]:
    """The strategies compared with the baseline, in registry order."""
    return [strategy for strategy in STRATEGIES.values() if not strategy.is_baseline]
