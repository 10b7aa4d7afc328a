"""The run plan: the config expanded into fully resolved runs, one per (strategy, LoRA rank/alpha,
learning rate, seed). Each run carries every setting it trains with, so nothing downstream reads a
setting from the config by name. The CLI (array index), the runner, bench and the report all use it.

Keys: a strategy with one run keeps its name (`lora`, `full_finetune`); a strategy with several runs
spells every setting that defines a run, e.g. `lora_r16_a32_lr0.0005_s43`, `full_finetune_lr5e-05_s42`.
Runs that differ only in learning rate and seed form a group: one headline row of the report, at the
rate chosen on dev.
"""

from __future__ import annotations

from job.config.schema import JobConfig
from job.errors import UserError
from job.training.loop import TrainSettings
from job.training.runs import LoRASettings, Run, rate_text
from job.training.strategies import STRATEGIES

__all__ = ["LoRASettings", "Run", "format_plan", "plan_runs"]


def plan_runs(config: JobConfig) -> list[Run]:
    """Every run of the config, in the order of `strategies`; within a strategy by LoRA rank, then
    learning rate and seed in the config's order. Array task i trains the i-th."""
    runs: list[Run] = []
    for name in config.strategies:
        shapes = _lora_shapes(config) if STRATEGIES[name].uses_lora else [None]
        rates, seeds = config.learning_rates_for(name), config.seeds()
        several = len(shapes) * len(rates) * len(seeds) > 1
        for lora in shapes:
            group = name if lora is None or len(shapes) == 1 else f"{name}_r{lora.r}_a{lora.alpha}"
            for rate in rates:
                for seed in seeds:
                    shape = f"_r{lora.r}_a{lora.alpha}" if lora is not None else ""
                    key = f"{name}{shape}_lr{rate_text(rate)}_s{seed}" if several else name
                    runs.append(
                        Run(
                            index=len(runs),
                            key=key,
                            group=group,
                            strategy=STRATEGIES[name],
                            settings=_train_settings(config, name, rate, seed),
                            eval_batch_size=config.eval_batch_size,
                            lora=lora,
                        )
                    )
    keys = [run.key for run in runs]
    if len(set(keys)) != len(keys):  # by construction they differ (rate_text round-trips); never merge two runs
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise UserError(f"the plan gives two runs the key {repeated[0]}; give each value once")
    return runs


def _lora_shapes(config: JobConfig) -> list[LoRASettings]:
    return [
        LoRASettings(r=rank, alpha=alpha, dropout=config.lora_dropout, target_modules=tuple(config.lora_target_modules))
        for rank, alpha in sorted(config.lora_pairs())
    ]


def _train_settings(config: JobConfig, strategy: str, learning_rate: float, seed: int) -> TrainSettings:
    return TrainSettings(
        learning_rate=learning_rate,
        batch_size=config.batch_size_for(strategy),
        num_epochs=config.num_epochs,
        weight_decay=config.weight_decay,
        warmup_ratio=config.warmup_ratio,
        max_grad_norm=config.max_grad_norm,
        seed=seed,
        logging_steps=config.logging_steps,
        bucket_window=config.length_bucket_window,
    )


def format_plan(runs: list[Run]) -> str:
    """`job plan`'s output: one line per run, then the array size a batch queue needs."""
    width = max(len(run.key) for run in runs)
    lines = [f"{run.index:>3}  {run.key:{width}}  {run.describe()}" for run in runs]
    return "\n".join([*lines, f"array size: {len(runs)}"])
