"""The run plan: the config expanded into fully resolved runs, one per (strategy, LoRA shape, learning
rate, seed), where a LoRA shape is its rank and alpha, target layers and LoRA options. Each run
carries every setting it trains with, so nothing downstream reads a setting from the config by name.
The CLI (array index), the runner, bench and the report all use it.

Keys: a strategy with one run keeps its name (`lora`, `full_finetune`); a strategy with several runs
spells every setting that defines a run, e.g. `lora_r16_a32_lr0.0005_s43`, `full_finetune_lr5e-05_s42`.
Runs that differ only in learning rate and seed form a group: one headline row of the report, at the
rate chosen on dev.
"""

from __future__ import annotations

import math

from job.config.schema import JobConfig
from job.errors import UserError
from job.training.loop import TrainSettings
from job.training.runs import LoRASettings, Run, rate_text, size_key
from job.training.strategies import STRATEGIES

__all__ = ["LoRASettings", "Run", "format_plan", "plan_runs"]

# An AWS Batch array job holds at most 10,000 child jobs, and a grid larger than that is a typo more often
# than a plan (`seed: [0, ..., 99999]`): 900,000 runs took 25 s just to print their keys.
MAX_RUNS = 10_000


def plan_runs(config: JobConfig) -> list[Run]:
    """Every run of the config, in the order of `strategies`; within a strategy by LoRA rank, then
    learning rate and seed in the config's order. Array task i trains the i-th."""
    runs: list[Run] = []
    sizes = config.train_sizes()
    sized = len(sizes) > 1
    for name in config.strategies:
        options = STRATEGIES[name].adapter_options
        strategy = STRATEGIES[name]
        shapes: list[LoRASettings | None] = [None]
        if options is not None:  # shapes that differ only in what the strategy does not use (LoKr: alpha) are one
            distinct: dict[str, LoRASettings] = {}
            for lora_shape in _lora_shapes(config, options):
                distinct.setdefault(strategy.shape_key(lora_shape), lora_shape)
            shapes = list(distinct.values())
        rates, seeds = config.learning_rates_for(name), config.seeds()
        count = len(shapes) * len(rates) * len(seeds) * len(sizes)
        several = count > 1
        if len(runs) + count > MAX_RUNS:
            raise UserError(_too_many(name, len(runs), len(shapes), len(rates), len(seeds), len(sizes)))
        for lora in shapes:
            shape = strategy.shape_key(lora) if lora is not None else ""
            for size in sizes:
                rows = size_key(size) if sized else ""
                group = name if len(shapes) == 1 and not sized else f"{name}{shape}{rows}"
                for rate in rates:
                    for seed in seeds:
                        key = f"{name}{shape}{rows}_lr{rate_text(rate)}_s{seed}" if several else name
                        runs.append(
                            Run(
                                index=len(runs),
                                key=key,
                                group=group,
                                strategy=strategy,
                                settings=_train_settings(config, name, rate, seed),
                                eval_batch_size=config.eval_batch_size,
                                lora=lora,
                                train_rows=size,
                                sized=sized,
                            )
                        )
    keys = [run.key for run in runs]
    if len(set(keys)) != len(keys):  # by construction they differ (rate_text round-trips); never merge two runs
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        raise UserError(f"the plan gives two runs the key {repeated[0]}; give each value once")
    return runs


def _too_many(name: str, before: int, shapes: int, rates: int, seeds: int, sizes: int) -> str:
    factors = [(shapes, "adapter shapes"), (rates, "rates"), (seeds, "seeds"), (sizes, "training sizes")]
    sweep = " x ".join(f"{count:,} {what}" for count, what in factors if count > 1)
    earlier, count = f"{before:,} runs before it, then " if before else "", shapes * rates * seeds * sizes
    return (f"the plan has more than {MAX_RUNS:,} runs ({earlier}{name}: {sweep} = {count:,}); "
            "is a list longer than meant? Split the grid into several configs")  # fmt: skip


def _lora_shapes(config: JobConfig, options: tuple[str, ...]) -> list[LoRASettings]:
    """Every adapter shape of a strategy: (rank, alpha) pairs by rank, then each target setting and each
    LoRA option the strategy takes (`options`), each a list in the config's order."""
    rslora = config.lora_option("rslora") if "rslora" in options else [False]
    plus = config.lora_option("plus_ratio") if "plus_ratio" in options else [1.0]
    pissa = config.lora_option("pissa") if "pissa" in options else [False]
    return [
        LoRASettings(
            r=rank,
            alpha=alpha,
            dropout=0.0 if svd else config.lora_dropout,  # PiSSA's branch is the weight's principal part: no dropout
            target_modules=modules,
            targets=targets,
            rslora=scaled,
            plus_ratio=float(ratio),
            pissa=svd,
        )
        for rank, alpha in sorted(config.lora_pairs())
        for targets, modules in config.lora_target_choices()
        for scaled in rslora
        for ratio in plus
        for svd in pissa
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
        eval_steps=config.eval_steps,
        max_steps=config.max_steps,
        accumulation=config.gradient_accumulation_steps,
    )


def plan_work(runs: list[Run], eval_titles: int | None) -> str:
    """`job plan`'s line on the work the runs do, whatever the device: optimizer steps and titles scored
    (a run's steps: its batches per epoch, the last one partial, times its epochs)."""
    if any(run.train_rows is None and run.settings.max_steps is None for run in runs):
        return "work: the training steps are known once the data is read (a size of max_train_samples is null)"
    steps = [run.settings.max_steps or math.ceil(run.train_rows / run.settings.batch_size) * run.settings.num_epochs
             for run in runs]  # fmt: skip
    each = f"{steps[0]:,} optimizer steps each" if len(set(steps)) == 1 else f"{min(steps):,} to {max(steps):,} steps"
    scored = (f"; each scores up to {eval_titles:,} dev and {eval_titles:,} test titles (fewer when the data has "
              "fewer; a test split carved from train takes at most half of it)") if eval_titles else ""  # fmt: skip
    return f"work: {len(runs)} runs, {each}, {sum(steps):,} in all{scored}"


def format_plan(runs: list[Run], notes: str = "") -> str:
    """`job plan`'s output: one line per run, any `notes`, then, last, the array size a batch queue needs
    (scripts read it from the last line)."""
    width = max(len(run.key) for run in runs)
    lines = [f"{run.index:>3}  {run.key:{width}}  {run.describe()}" for run in runs]
    return "\n".join([*lines, *([notes] if notes else []), f"array size: {len(runs)}"])
