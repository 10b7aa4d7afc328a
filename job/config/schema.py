"""The job's configuration: one typed, validated object built from YAML plus `key=value` overrides.

Validation happens here, once, before anything is loaded or written; everything downstream trusts it.
"""

from __future__ import annotations

import collections
import contextlib
import difflib
import hashlib
import json
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from job.config.habits import foreign_key_hint
from job.data.sources import DataSpec
from job.data.tasks import DATASET_NAMES, DEFAULT_DATASET, OWN, OWN_DATA_KEYS
from job.data.textfiles import read_text
from job.errors import UserError
from job.output.layout import RESERVED_NAMES
from job.output.storage import output_dir_problem
from job.runtime.device import PRECISIONS
from job.training.strategies import DEFAULT_STRATEGIES, LORA_TARGET_PRESETS, STRATEGIES, STRATEGY_NAMES

StrategyName = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]  # derived from the registry
TargetPreset = Literal[tuple(LORA_TARGET_PRESETS)]  # type: ignore[valid-type]
PositiveInt = Annotated[int, Field(ge=1)]
TRACKERS = ("visualdl", "tensorboard", "mlflow")  # report_to's choices (job.results.tracking)
MAX_SEED = 2**32 - 1  # Paddle's and NumPy's generators take seeds up to here
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Rate = Annotated[float, Field(gt=0, le=1)]


def own_key(strategy: str, setting: str) -> str:
    """The config key of a strategy's own setting: `lora_learning_rate`, `full_finetune_batch_size`."""
    return f"{strategy}_{setting}"


# Keys that take one value or a list; a list makes one run per value (the grid). No empty lists and no
# repeated values: either would make runs that are not what the user meant.
GRID_KEYS = ("seed", "learning_rate", *(own_key(name, "learning_rate") for name in STRATEGY_NAMES))

# LoRA's options: each takes one value or a list (one headline row per value).
LORA_OPTION_KEYS = ("lora_targets", "lora_rslora", "lora_plus_ratio", "lora_pissa")

# Keys that do not change any strategy's numbers (where results go, which strategies run, how
# often to log): they are left out of the config hash, so results of split runs can be merged.
NOT_HASHED_KEYS = frozenset(
    {
        "output_dir",
        "report_file",
        "save_artifacts",
        "device",
        "logging_steps",
        "strategies",
        "report_to",
        "margin",
        "workers",
        "price_per_hour",
        "currency",
        "analysis",
        "intruder_threshold",
        "save_steps",
        "save_minutes",
        "serving",
        "capacity",
        "memory_budget_mb",
    }
)


# Keys added after configs were run, with the default that changes nothing (left out of the hash then).
LATER_KEYS: dict[str, Any] = {"max_steps": None, "gradient_accumulation_steps": 1}


def is_plain_file_name(value: str) -> bool:
    """A name that stays inside its folder: no separators, no '.' or '..', not absolute."""
    return bool(value) and value not in {".", ".."} and Path(value).name == value and "\\" not in value


def report_file_problem(value: str) -> str | None:
    """Why `value` cannot be the report's file name, or None when it can."""
    if not is_plain_file_name(value):
        return "must be a plain file name inside output_dir (no folders, no '..')"
    if value in RESERVED_NAMES:
        return f"{value!r} is one of the job's own files or folders ({', '.join(sorted(RESERVED_NAMES))})"
    return None


@dataclass(frozen=True)
class OwnSettings:
    """A strategy's own learning rates and batch size, or None where it takes the shared value."""

    learning_rate: float | list[float] | None
    batch_size: int | None


class CommonConfig(BaseModel):
    """Every setting shared by the strategies; JobConfig adds each registered strategy's own keys.
    Field descriptions are the config reference (see `job config-reference`)."""

    # allow_inf_nan: `max_grad_norm: .inf` or `learning_rate: .nan` would only fail later, as NaN losses.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    # --- the seed's keys ---
    model_name: str = Field(
        "ernie-3.0-medium-zh",
        description="PaddleNLP model name (downloaded once"
        " into `$PPNLP_HOME/models`) or a "
        "local folder saved with "
        "`save_pretrained`",
    )
    max_seq_length: int = Field(
        128,
        ge=8,
        description="tokens per title after truncation; must not "
        "exceed the model's position limit. Batches "
        "pad to their longest title",
    )
    batch_size: int = Field(8, ge=1, description="training batch size")
    learning_rate: Rate | list[Rate] = Field(
        5e-5,
        description="peak AdamW learning rate, shared by the strategies; a list (`[3e-5, "
        "5e-5]`) trains one run per rate and picks the best on dev",
    )
    weight_decay: float = Field(
        0.01, ge=0, le=1, description="AdamW weight decay, not applied to biases and LayerNorm weights"
    )
    num_epochs: int = Field(1, ge=1, le=1000, description="passes over the training sample")
    max_steps: PositiveInt | None = Field(
        None,
        description="train every run for exactly this many optimizer steps, over as many epochs (and part of the "
        "last) as that takes; overrides `num_epochs` (transformers' `max_steps`): strategies compared at equal "
        "steps. The warm-up and the linear decay span these steps",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="cut each batch of `batch_size` rows into this many micro-batches and sum their gradients "
        "before the step: the same step as the whole batch (within fp32 rounding; dropout masks differ), in the "
        "memory of a micro-batch. `batch_size` stays the batch a step sees (transformers multiplies instead: "
        "there per-device batch x accumulation = the effective batch)",
    )
    max_train_samples: PositiveInt | list[PositiveInt | None] | None = Field(
        512,
        description="rows drawn (seeded) from train; `null` = all. A list (`[500, 2000, 8000, null]`)"
        " is a learning curve: every run at each size, on the same dev and test titles, "
        "one comparison per size",
    )
    max_eval_samples: int | None = Field(256, ge=1, description="rows drawn for dev, and for test; `null` = all")
    seed: Seed | list[Seed] = Field(
        42,
        description="seeds batch order, classifier-head and LoRA initialisation, dropout. A list "
        "(`[42, 43, 44]`) repeats every run once per seed; the report shows mean ± "
        "std",
    )
    data_seed: Seed | None = Field(
        None,
        description="seeds the train/dev/test sample, drawn once so every run sees the same "
        "rows (the paired test needs it); `null` = the first seed",
    )
    output_dir: str = Field(
        "reports",
        min_length=1,
        description="where the report and results go: a folder, or `s3://bucket/prefix` / "
        "`gs://bucket/prefix` (see [Run on a batch queue](batch-queues.md#batch-queues))",
    )
    report_file: str = Field(
        "ernie_lora_vs_full_report.md", description="report file name: a plain name inside `output_dir`"
    )
    save_artifacts: bool = Field(
        False,
        description="save the LoRA adapter, the LoRA-merged model and"
        " the full-FT model under "
        "`output_dir/artifacts/<run>/`",
    )
    lora_r: PositiveInt | list[PositiveInt] = Field(
        16,
        description="LoRA rank (at most the hidden size). A list, e.g. `[4, 8, 16]`, is a rank "
        "sweep: one LoRA row per rank, each trained from the same weights on the same"
        " batches",
    )
    lora_alpha: PositiveInt | list[PositiveInt] = Field(
        32,
        description="LoRA scale numerator (updates scaled by alpha / r): one value for every "
        "rank, or a list paired with the list of ranks (`lora_r: [4, 8]`, "
        "`lora_alpha: [8, 16]`)",
    )
    lora_dropout: float = Field(
        0.1, ge=0, lt=1, description="dropout on the LoRA branch (not on PiSSA's, which trains without)"
    )

    # --- what a real run needs ---
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto", description="`auto`: GPU when Paddle has CUDA and sees a GPU, else CPU; `gpu` without one exits 2"
    )
    report_note: str | None = Field(
        None, max_length=2000, description="a paragraph the report prints under its title (the demo says it is one)"
    )
    workers: PositiveInt | Literal["auto"] = Field(
        1,
        description="processes that train the plan's pending runs side by side on this machine, each taking the "
        "next run when it finishes one: on a GPU node each pinned to one GPU, on CPU each given its share of the "
        "cores; auto: one per visible GPU (1 on CPU). Same records as one process; for many small runs (one "
        "large run: data parallelism, `job launch`)",
    )
    dataset: Literal[DATASET_NAMES] = Field(  # type: ignore[valid-type]
        DEFAULT_DATASET,
        description="the task: a CLUE classification task by name (`tnews`, `iflytek`, `afqmc`, "
        "`ocnli`, `cmnli`), or `own` for your files in `data_dir`; see [Your own data and"
        " other CLUE tasks](own-data.md#your-own-data-and-other-clue-tasks)",
    )
    data_dir: str | None = Field(
        None,
        description="`null`: PaddleNLP's `clue/<dataset>` (downloaded once, md5-checked); or a folder"
        " of the task's CLUE-format files (`train.json`, `dev.json`, an optional labelled"
        " `test.json`; OCNLI's train is `train.50k.json`); with `dataset: own`, your "
        "`train` and `dev` (and optional labelled `test`) files",
    )
    text_column: str = Field("sentence", min_length=1, description="`dataset: own`: the column of the text")
    text_pair_column: str | None = Field(
        None,
        min_length=1,
        description="`dataset: own`: the column of a second text: a sentence-pair"
        " task (`[CLS] a [SEP] b [SEP]`, segment ids 0 and 1)",
    )
    label_column: str = Field("label", min_length=1, description="`dataset: own`: the column of the label")
    label_names: list[str] | None = Field(
        None,
        min_length=2,
        description="`dataset: own`: every label in class-id order, checked against the data; `null` "
        "= the sorted distinct labels of train (numerically when all are integers)",
    )
    lora_targets: TargetPreset | list[TargetPreset] = Field(
        "attention_qv",
        description="the layers LoRA (and LoKr, VeRA) wrap, by preset: `attention_qv` (q and v projections)"
        " or `all_linear` (q, k, v, out and both MLP projections of every layer); a list "
        "(`[attention_qv, all_linear]`) trains one row per preset",
    )
    lora_target_modules: list[str] | None = Field(
        None,
        min_length=1,
        description="regexes (full match) of layer names LoRA wraps, e.g. `.*\\.self_attn\\.q_proj`, "
        "instead of a `lora_targets` preset (giving both is an error)",
    )
    lora_rslora: bool | list[bool] = Field(
        False, description="rsLoRA: scale updates by alpha / √r instead of alpha / r; `[false, true]` trains both"
    )
    lora_plus_ratio: Annotated[float, Field(gt=0)] | list[Annotated[float, Field(gt=0)]] = Field(
        1.0,
        description="LoRA+: B's learning rate is this many times A's (PaddleNLP's `lora_plus_scale`; "
        "the LoRA+ paper uses 16); a list sweeps it",
    )
    lora_pissa: bool | list[bool] = Field(
        False,
        description="PiSSA: A and B start from the frozen weight's top-r singular vectors and the "
        "weight keeps the residual (scale 1: alpha is not used); only the merged model is"
        " saved (see [Methods and baselines](methods.md#methods-and-baselines))",
    )
    strategies: list[StrategyName] = Field(
        list(DEFAULT_STRATEGIES),
        min_length=1,
        description=f"which strategies run, in this order: {', '.join(f'`{n}`' for n in DEFAULT_STRATEGIES)} by "
        f"default, and also {', '.join(f'`{n}`' for n in STRATEGY_NAMES if n not in DEFAULT_STRATEGIES)} (see "
        "[Methods and baselines](methods.md#methods-and-baselines))",
    )
    margin: float = Field(
        1.0,
        ge=0,
        le=100,
        description="non-inferiority margin in accuracy points: a row is good enough when the 95% "
        "interval of its accuracy minus full fine-tuning's lies above −margin; `job "
        "report --margin` judges saved runs again",
    )
    analysis: bool = Field(
        True,
        description="at the end of each run, from the weights in memory: the rank of full fine-tuning's update "
        "(against a random matrix's, and its stable rank) and each row's intruder dimensions; `false` skips it",
    )
    intruder_threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="a fine-tuned weight's top-10 singular vector is an intruder dimension when no singular vector "
        "of the pretrained weight has a cosine similarity with it of this or more (Shuttleworth et al. 2024)",
    )
    price_per_hour: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="what an hour of the device costs (your cloud's on-demand or spot rate for the node), in "
        "`currency`: the report's cost table and `job plan` then give training time as money too",
    )
    currency: str = Field(
        "USD", min_length=1, max_length=8, pattern=r"^[A-Za-z$€£¥]+$", description="the currency of `price_per_hour`"
    )
    eval_batch_size: PositiveInt | Literal["auto"] = Field(
        "auto",
        description="batch size for evaluation: a number, or `auto` = 16 on CPU (measured fastest "
        "there: larger batches were slower) and 128 on a GPU (a batch of 16 leaves it "
        "idle)",
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="share of steps with linear warm-up, then linear decay to 0"
    )
    max_grad_norm: float = Field(1.0, ge=0, description="global gradient-norm clipping (0 = off)")
    logging_steps: int = Field(10, ge=1, description="steps between loss lines in the log")
    eval_steps: PositiveInt | None = Field(
        None,
        description="score dev every N optimizer steps and at the end (the dev curve); `null` = only at the end",
    )
    select_checkpoint: Literal["last", "best_dev"] = Field(
        "last",
        description="`best_dev`: test is scored on, and artifacts saved from, the evaluation with the"
        " best dev accuracy (needs `eval_steps`)",
    )
    early_stopping_patience: PositiveInt | None = Field(
        None,
        description="stop a run after this many evaluations without a better dev accuracy (needs `eval_steps`)",
    )
    save_steps: PositiveInt | None = Field(
        None,
        description="write the run's checkpoint (trained weights, optimizer state, random generators, position"
        " in the batches, dev curve) to `output_dir/checkpoints/<run>.safetensors` every N steps, for a rerun to"
        " resume from; removed when the run's record is saved. See [Resume](batch-queues.md#resume-a-run-mid-way)",
    )
    save_minutes: float | None = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description="also write it after this many minutes of training since the last one (`null`: only by"
        " `save_steps`). With either set, a stop request (SIGTERM from a queue reclaiming a node, Ctrl-C) writes"
        " one before the job exits 143",
    )
    serving: bool = Field(
        True,
        description="measure, at the end of each run on its device, what serving its model costs: latency per"
        " title at batch 1, per batch of 32, titles/s at 32, for LoRA's adapter unmerged and merged (and that the"
        " two agree: largest logit difference, equal predictions on up to 512 test titles) and for every other"
        " model as trained; a few seconds a run on CPU for ERNIE 3.0 Medium. In the report's Serving table",
    )
    capacity: bool = Field(
        False,
        description="find, for each strategy (on the first seed's runs), the largest training batch that fits"
        " the memory budget and its samples/s there against the configured batch: the peak at two batch sizes,"
        " the line through them, one real step to check (backing off when over). In the report's Capacity table"
        " and `job bench`. See [What the memory buys](outputs.md#what-the-memory-buys)",
    )
    memory_budget_mb: PositiveInt | None = Field(
        None,
        description="the memory `capacity` fills, in MiB of Paddle's allocator: required on CPU (there is no"
        " default: the search is skipped); on a GPU the default is the device's memory as Paddle may take it",
    )
    report_to: list[Literal[TRACKERS]] = Field(  # type: ignore[valid-type]
        [],
        description="experiment trackers for each run's training loss and learning rate per step, dev accuracy"
        " and loss at each evaluation, and its final figures: `visualdl` (`output_dir/vdl/<run>`), `tensorboard`"
        " (`output_dir/tensorboard/<run>`: `tensorboard --logdir reports/tensorboard`), `mlflow` (a run per job"
        " run, the report as an artifact; the store is `MLFLOW_TRACKING_URI`, else `output_dir/mlflow.db`). One"
        " name or a list. The older `visualdl: true` means `report_to: [visualdl]`. See [Tracking]"
        "(outputs.md#experiment-tracking)",
    )
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "auto",
        description="training precision: `fp32`, `bf16` or `fp16` (mixed precision, GPU only), or "
        "`auto` = bf16 on a GPU of compute capability 8.0 or newer, fp16 with the loss "
        "scaler on 7.x, else fp32. Evaluation always runs in fp32. See [Device and "
        "threads](devices.md#devices-threads-and-gpus)",
    )
    compile: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run the training forward pass as Paddle's static graph (`paddle.jit.to_static`):"
        " `on`, `off`, or `auto` = off (on CPU the job's eager step measured as fast or "
        "faster; on a GPU not measured yet, see [docs/performance.md](performance.md)). "
        "Off under data parallelism. With it, dropout is Paddle's own, drawn inside the "
        "graph, so a compiled run's numbers differ from an eager one's (seeded and "
        "reproducible; `compiled` is recorded per run and in `bench.json`)",
    )
    length_bucket_window: int = Field(
        16,
        ge=0,
        description="training batches are drawn from windows of this many batches of the "
        "seeded order, sorted by length inside the window (less padding: about "
        "25% fewer tokens a step on TNEWS); 0 = plain shuffled batches",
    )

    @field_validator("model_name", "output_dir", "report_file", "data_dir", "text_column", "label_column")
    @classmethod
    def _no_nul_byte(cls, value: str | None) -> str | None:
        if value is not None and "\0" in value:
            raise ValueError("contains a NUL byte, which no path can hold")
        return value

    @field_validator("output_dir", "report_file")
    @classmethod
    def _usable_place(cls, value: str, info: ValidationInfo) -> str:
        """output_dir: a folder or an object-store prefix; report_file: a plain name inside it."""
        problem = (output_dir_problem if info.field_name == "output_dir" else report_file_problem)(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="before")
    @classmethod
    def _visualdl_key(cls, data: Any) -> Any:
        """`visualdl: true`, the key before `report_to` (and in older records' configs), is `report_to: [visualdl]`."""
        if isinstance(data, dict) and "visualdl" in data:
            data = dict(data)
            enabled = data.pop("visualdl")
            if not isinstance(enabled, bool):
                raise ValueError(f"config key 'visualdl': must be true or false (got {enabled!r}); or use report_to")
            given = data.get("report_to", [])
            given = [given] if isinstance(given, str) else list(given) if isinstance(given, list) else given
            if enabled and isinstance(given, list) and "visualdl" not in given:
                given = [*given, "visualdl"]
            data["report_to"] = given
        return data

    @field_validator("report_to", mode="before")
    @classmethod
    def _trackers_as_list(cls, value: Any) -> Any:
        """One tracker may be given alone (`report_to: mlflow`); each is kept once."""
        if isinstance(value, str):
            return [value]
        return list(dict.fromkeys(value)) if isinstance(value, list) else value

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_switch(cls, value: Any) -> Any:
        """YAML reads a bare `on` / `off` as true / false: they mean the same here."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("label_names", mode="before")
    @classmethod
    def _labels_as_text(cls, value: Any) -> Any:
        """JSON-lines labels may be integers (`1`), and `label_names: [0, 1]` names them."""
        if isinstance(value, list):
            return [str(item) if isinstance(item, int) and not isinstance(item, bool) else item for item in value]
        return value

    @field_validator("label_names")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if any(not name for name in value):
                raise ValueError("holds an empty name")
            repeated = sorted(name for name, count in collections.Counter(value).items() if count > 1)
            if repeated:
                raise ValueError(f"names {', '.join(map(repr, repeated))} more than once; give each label once")
        return value

    @model_validator(mode="after")
    def _data_keys(self) -> CommonConfig:
        if self.dataset == OWN and not self.data_dir:
            raise ValueError(f"config key 'dataset': {OWN} reads your files from data_dir; set data_dir")
        if self.dataset != OWN:
            # by value, not by whether the key was written: a saved record's config writes every key
            stray = [key for key in OWN_DATA_KEYS if getattr(self, key) != type(self).model_fields[key].default]
            if stray:
                raise ValueError(
                    f"config key '{stray[0]}' is read only with dataset: {OWN} (dataset is {self.dataset}, whose "
                    f"columns are fixed); for your own files set dataset: {OWN}"
                )
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ValueError("config key 'text_pair_column': the same column as text_column")
        if self.label_column in (self.text_column, self.text_pair_column):
            raise ValueError("config key 'label_column': the same column as a text column")
        return self

    @field_validator("strategies")
    @classmethod
    def _no_duplicate_strategy(cls, value: list[str]) -> list[str]:
        duplicates = sorted(name for name, count in collections.Counter(value).items() if count > 1)
        if duplicates:
            raise ValueError(f"lists {', '.join(duplicates)} more than once")
        return value

    @field_validator("lora_r", "lora_alpha", *GRID_KEYS, *LORA_OPTION_KEYS, check_fields=False)
    @classmethod
    def _non_empty_list(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list; give a number or a list of numbers")
        return value

    @field_validator(*GRID_KEYS, *LORA_OPTION_KEYS, check_fields=False)
    @classmethod
    def _no_repeated_value(cls, value: Any) -> Any:
        if isinstance(value, list):  # counted once, not per item: 60,000 seeds took 30 s with list.count
            repeated = sorted(item for item, count in collections.Counter(value).items() if count > 1)
            if repeated:
                shown = ", ".join(f"{item:g}" if isinstance(item, float) else str(item) for item in repeated)
                raise ValueError(f"the list repeats {shown}; give each value once")
        return value

    @field_validator("max_train_samples")
    @classmethod
    def _distinct_sizes(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list trains nothing; give a size, null (all), or a list of them")
            if len(set(value)) != len(value):
                raise ValueError(f"the list repeats a size: {value}")
        return value

    @model_validator(mode="after")
    def _evaluation_keys(self) -> CommonConfig:
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError(
                "config key 'early_stopping_patience' counts evaluations during training; set eval_steps too"
            )
        if self.select_checkpoint == "best_dev" and self.eval_steps is None:
            raise ValueError(
                "config key 'select_checkpoint': best_dev chooses among the evaluations during training, and "
                "without eval_steps there is only the last; set eval_steps (PaddleNLP's CLUE protocol: 100)"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_name_targets(self) -> CommonConfig:
        if True in _as_list(self.lora_rslora) and True in _as_list(self.lora_pissa):
            raise ValueError(
                "config keys 'lora_rslora' and 'lora_pissa': PiSSA's scale is 1, so rsLoRA would change nothing in "
                "a run with both; sweep them in separate configs"
            )
        if self.lora_target_modules is not None and self.lora_targets != "attention_qv":
            raise ValueError(
                "config keys 'lora_targets' and 'lora_target_modules' both name LoRA's layers; give one of them"
            )
        return self

    @model_validator(mode="after")
    def _keys_a_strategy_reads(self, info: ValidationInfo) -> CommonConfig:
        """A LoRA option set where no listed strategy reads it would be ignored in silence (lokr with
        lora_rslora, head_only with lora_targets). Judged on the config's own `strategies`: `--strategy`
        picks some of them afterwards (SUBSET), and the keys stay what the whole config meant."""
        if info.context and info.context.get(SUBSET):
            return self
        fields = type(self).model_fields
        for key in (*LORA_OPTION_KEYS, "lora_target_modules"):
            option = "targets" if key == "lora_target_modules" else key.removeprefix("lora_")
            if getattr(self, key) == fields[key].default:
                continue
            readers = [name for name in STRATEGY_NAMES if option in (STRATEGIES[name].adapter_options or ())]
            if not any(name in readers for name in self.strategies):
                raise ValueError(
                    f"config key '{key}' is read only by {', '.join(readers)}, and strategies are "
                    f"{', '.join(self.strategies)}: it would change nothing; add {readers[0]} to strategies, or "
                    "drop the key"
                )
        return self

    @model_validator(mode="after")
    def _sweep_pairs(self) -> CommonConfig:
        if isinstance(self.lora_alpha, list) and len(self.lora_alpha) != len(_as_list(self.lora_r)):
            raise ValueError(
                f"config key 'lora_alpha': a list of {len(self.lora_alpha)} values needs as many ranks in "
                f"'lora_r' (got {self.lora_r})"
            )
        pairs = self.lora_pairs()
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"config key 'lora_r': the sweep repeats a (rank, alpha) pair: {pairs}")
        return self

    @field_validator("lora_target_modules")
    @classmethod
    def _valid_regexes(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regex: {exc}") from None
        return value

    # --- derived values ---
    def lora_pairs(self) -> list[tuple[int, int]]:
        """(rank, alpha) of every LoRA row: one alpha for all ranks, or alphas paired with ranks."""
        ranks = _as_list(self.lora_r)
        alphas = self.lora_alpha if isinstance(self.lora_alpha, list) else [self.lora_alpha] * len(ranks)
        return list(zip(ranks, alphas, strict=False))

    def data_spec(self) -> DataSpec:
        """What job.data.sources reads for this config."""
        return DataSpec(
            dataset=self.dataset, data_dir=self.data_dir, text_column=self.text_column,
            text_pair_column=self.text_pair_column, label_column=self.label_column,
            label_names=tuple(self.label_names) if self.label_names is not None else None,
        )  # fmt: skip

    def lora_target_choices(self) -> list[tuple[str, tuple[str, ...]]]:
        """(preset, regexes) of each target setting: `lora_target_modules` when given, else each preset."""
        if self.lora_target_modules is not None:
            return [("custom", tuple(self.lora_target_modules))]
        return [(preset, LORA_TARGET_PRESETS[preset]) for preset in _as_list(self.lora_targets)]

    def lora_option(self, option: str) -> list[Any]:
        """Every value of `lora_<option>` (rslora, plus_ratio, pissa), a sweep when it is a list."""
        return _as_list(getattr(self, f"lora_{option}"))

    def seeds(self) -> list[int]:
        return _as_list(self.seed)

    def train_sizes(self) -> list[int | None]:
        """Every training size, in the config's order (one: the plain case)."""
        return _as_list(self.max_train_samples)

    def sample_seed(self) -> int:
        """The seed of the data sample: `data_seed`, else the first seed."""
        return self.seeds()[0] if self.data_seed is None else self.data_seed

    def own(self, strategy: str) -> OwnSettings:
        """The strategy's own settings, read from its keys (`<strategy>_learning_rate`, ...)."""
        return OwnSettings(*(getattr(self, own_key(strategy, setting)) for setting in OWN_SETTINGS))

    def learning_rates_for(self, strategy: str) -> list[float]:
        own = self.own(strategy).learning_rate
        return _as_list(self.learning_rate if own is None else own)

    def batch_size_for(self, strategy: str) -> int:
        own = self.own(strategy).batch_size
        return self.batch_size if own is None else own

    def config_hash(self) -> str:
        """Hash of everything that changes the numbers (not where they are written). A key added after
        configs were run is left out while it has its default, so their records keep their hash."""
        relevant = {
            k: v for k, v in self.model_dump().items()
            if k not in NOT_HASHED_KEYS and not (k in LATER_KEYS and v == LATER_KEYS[k])
        }  # fmt: skip
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


OWN_SETTINGS = ("learning_rate", "batch_size")  # the order of OwnSettings' fields


def _own_fields() -> dict[str, Any]:
    """Each registered strategy's own keys, in registry order, typed and described like the shared ones."""
    fields: dict[str, Any] = {}
    for name, strategy in STRATEGIES.items():
        fields[own_key(name, "learning_rate")] = (
            Rate | list[Rate] | None,
            Field(None, description=f"{strategy.title}'s own rate or rates (null: learning_rate)"),
        )
        fields[own_key(name, "batch_size")] = (
            int | None,
            Field(None, ge=1, description=f"{strategy.title}'s own batch size (null: batch_size)"),
        )
    return fields


# The strategies' own keys come from the registry: a new strategy gets them without an edit here.
JobConfig = create_model("JobConfig", __base__=CommonConfig, __module__=__name__, **_own_fields())
JobConfig.__doc__ = "Every setting of a run: the shared keys and each strategy's own."

FIELD_NAMES: tuple[str, ...] = tuple(JobConfig.model_fields)
OLDER_KEYS = frozenset({"visualdl"})  # keys a newer one replaced, still read (CommonConfig._visualdl_key)


MAX_ALIASES = 16  # a config needs few or none; a "billion laughs" needs dozens


class TooManyAliases(yaml.YAMLError):
    pass


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python tags) that also reads `5e-5` as a float, as YAML 1.2 does (plain
    PyYAML, YAML 1.1, would read it as the string '5e-5'), and refuses more than MAX_ALIASES aliases,
    so a small file cannot expand into gigabytes when the config is validated or quoted."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise TooManyAliases(f"more than {MAX_ALIASES} aliases (*name); a config needs few or none")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        """A key written twice in one mapping is an error naming both lines: PyYAML keeps the last one
        silently, so `lora_r: 8` above a forgotten `lora_r: 4` trained rank 4. Keys merged in with `<<`
        may still be overridden, as YAML means them to be."""
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {excerpt(key)} is written twice (lines {seen[key].line + 1} and "
                    f"{key_node.start_mark.line + 1}); keep one", key_node.start_mark)  # fmt: skip
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

# Integers as YAML 1.2 reads them: decimal, with 0o and 0x spelt out. YAML 1.1 (PyYAML's default) reads
# `seed: 010` as octal 8 and `lora_r: 1:30` as sexagesimal 90, silently; here the first is 10 and the
# second is not a number (the schema then names the key). Floats in base 60 go the same way.
YAML12_INT = re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$")  # 10_000 still reads as 10000
YAML12_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9][0-9_]*(?:\.[0-9_]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:int" and
            not (tag == "tag:yaml.org,2002:float" and pattern.match("1:30.5"))]
    for first, resolvers in SafeLoader.yaml_implicit_resolvers.items()
}  # fmt: skip
SafeLoader.add_implicit_resolver("tag:yaml.org,2002:int", YAML12_INT, list("-+0123456789"))
SafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+0123456789."))


INT_DIGITS = 100  # no setting needs more; Python's int() refuses 4,300 and more with a ValueError (a traceback)


def _yaml12_int(loader: SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if len(text) > INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {len(text):,} characters: no setting is that large", node.start_mark
        )
    if text.startswith(("0o", "0x")):
        return int(text[2:], 8 if text[1] == "o" else 16)
    return int(text.replace("_", ""), 10)


SafeLoader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where (line and column) and what, without its quote of the file (an
    error is one line in a batch log, and the quote could be anything the file holds)."""
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, yaml.MarkedYAMLError) and mark is not None:
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        return f"line {mark.line + 1}, column {mark.column + 1}: {what}"
    if isinstance(exc, yaml.reader.ReaderError):
        shown = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a byte"
        return f"character {exc.position + 1}: {exc.reason}, {shown}"
    return " ".join(str(exc).split())


def safe_load(text: str) -> Any:
    """YAML as the job reads it (YAML 1.2 numbers); nesting deeper than Python's recursion limit (a value of
    100,000 `[`) is a YAMLError like any other, not a RecursionError traceback."""
    try:
        return yaml.load(text, Loader=SafeLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deep: a config is a flat mapping of key: value") from None


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    strategies: list[str] | None = None,
    origins: dict[str, str] | None = None,
) -> JobConfig:
    """Read a YAML file (or none: all defaults), apply overrides, validate; then, with `strategies`
    (`--strategy`), keep only those. Raises UserError. With `origins` (the CLI's: key -> `--device`),
    a bad key from the overrides is blamed on where it came from (`--set lora_r=...` otherwise), not on
    the file."""
    values: dict[str, Any] = read_yaml_mapping(Path(path)) if path is not None else {}
    values.update(overrides or {})
    file = str(path) if path else "defaults"
    given = {key: origins.get(key, f"--set {key}=...") for key in overrides or {}} if origins is not None else {}
    config = validate_config(values, source=file, origins=given)
    if not strategies:
        return config
    return validate_config({**values, "strategies": strategies}, source="--strategy", subset=True)


CONFIG_LIMIT = 1 << 20  # a config is a few hundred bytes; a megabyte means the wrong file


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.exists() and not path.is_symlink():
        raise UserError(f"config file {path} does not exist{_nearest_config(path)}")
    text = read_text(path, "config file", limit=CONFIG_LIMIT)
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {yaml_problem(exc)}") from None
    if data is None:
        raise UserError(f"config file {path} is empty; write at least one key (see configs/)")
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of key: value, not a {type(data).__name__}")
    return data


def _nearest_config(path: Path) -> str:
    """'; did you mean configs/x.yaml?' for a config path that does not exist, from the configs/ folder
    beside it, the current one's, or the project's; else the files there."""
    folders = [path.parent, Path("configs"), Path(__file__).resolve().parents[2] / "configs"]
    known: dict[str, Path] = {}
    for folder in folders:
        with contextlib.suppress(OSError):
            for candidate in sorted(folder.glob("*.y*ml")):
                known.setdefault(candidate.name, candidate)
    if not known:
        return ""
    close = difflib.get_close_matches(path.name, list(known), n=1, cutoff=0.5)
    if close:
        return f"; did you mean {known[close[0]]}?"
    return f"; configs: {', '.join(str(known[name]) for name in list(known)[:8])}"


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` -> (key, value), the value read as YAML so `8` is an int and `[4, 8]` a list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {excerpt(text)}: expected KEY=VALUE, e.g. --set lora_r=8")
    try:
        value = safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {excerpt(text)}: value is not valid YAML: {yaml_problem(exc)}") from None
    return key, value


SUBSET = "strategy_subset"  # validation context: `strategies` is --strategy's pick of a checked config's


def validate_config(
    values: dict[str, Any], source: str = "settings", subset: bool = False, origins: dict[str, str] | None = None
) -> JobConfig:
    origins = origins or {}
    unknown = [key for key in values if key not in FIELD_NAMES and key not in OLDER_KEYS]
    if unknown:
        raise UserError(_unknown_key_message(unknown[0], origins.get(unknown[0], source)))
    try:
        return JobConfig.model_validate(values, context={SUBSET: subset})
    except ValidationError as exc:
        raise UserError(_validation_message(exc, source, origins)) from None
    except TypeError as exc:  # non-string keys, e.g. `1: x` in YAML
        raise UserError(f"{source}: {exc}") from None


def _unknown_key_message(key: Any, source: str) -> str:
    foreign = foreign_key_hint(str(key)) if str(key) not in FIELD_NAMES else None
    close = difflib.get_close_matches(str(key), FIELD_NAMES, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(FIELD_NAMES)}"
    if foreign is not None:  # a habit from transformers, PEFT or litgpt: say what the job has instead
        hint = f" (a key of another trainer): {foreign}"
    return f"{source}: unknown config key {excerpt(str(key))}{hint}"


def _validation_message(exc: ValidationError, source: str, origins: dict[str, str] | None = None) -> str:
    lines = []
    for error in _one_branch_per_union(exc.errors()):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check across keys names its keys itself
            lines.append(f"{source}: {message}")
            continue
        key, *rest = [str(part) for part in error["loc"]]
        items = [part for part in rest if part.isdigit()]
        item = f" (item {items[0]})" if items else ""
        where = (origins or {}).get(key, source)
        lines.append(f"{where}: config key '{key}'{item}: {message} (got {excerpt(error.get('input'))})")
    return "\n".join(dict.fromkeys(lines))


EXCERPT = reprlib.Repr()  # Python 3.11's Repr takes no arguments
EXCERPT.maxlevel, EXCERPT.maxlist, EXCERPT.maxdict, EXCERPT.maxstring, EXCERPT.maxother, EXCERPT.maxlong = (
    2, 4, 4, 80, 80, 40
)  # fmt: skip


def excerpt(value: Any) -> str:
    """A bounded repr of an input for a message: never the whole of a huge or deeply nested value."""
    return EXCERPT.repr(value)


def _one_branch_per_union(errors: list[Any]) -> list[Any]:
    """For `int | list[int]` keys pydantic reports both branches; keep the one the input was meant for."""
    kept = []
    for error in errors:
        branch = next((str(part) for part in error["loc"][1:2] if not str(part).isdigit()), None)
        if branch is None:
            kept.append(error)
            continue
        value_is_list = isinstance(error.get("input"), list) or str(error["loc"][-1]).isdigit()
        if branch.startswith("list[") == value_is_list:
            kept.append(error)
    return _alternatives_joined(kept or errors)


def _alternatives_joined(errors: list[Any]) -> list[Any]:
    """A value that fits no branch of `int | "auto"` gets one message naming both, not one line each:
    "Input should be greater than or equal to 1, or 'auto'"."""
    joined: list[dict[str, Any]] = []
    by_key: dict[Any, dict[str, Any]] = {}  # a key's first branch error (loc: key, branch)
    for error in errors:
        branch_of = error["loc"][0] if len(error["loc"]) == 2 else None
        if branch_of is not None and branch_of in by_key:
            first = by_key[branch_of]
            first["msg"] = f"{first['msg']}, or {error['msg'].removeprefix('Input should be ')}"
            continue
        joined.append(dict(error))
        if branch_of is not None:
            by_key[branch_of] = joined[-1]
    return joined


def check_against_model(config: JobConfig, model_limits: dict[str, int]) -> None:
    """Checks that need the model's size: sequence length and LoRA rank."""
    max_positions = model_limits.get("max_position_embeddings")
    if max_positions and config.max_seq_length > max_positions:
        raise UserError(
            f"config key 'max_seq_length': {config.max_seq_length} is above the model's limit of {max_positions}"
        )
    hidden = model_limits.get("hidden_size")
    largest = max(rank for rank, _ in config.lora_pairs())
    if hidden and any(STRATEGIES[name].adapter_options for name in config.strategies) and largest > hidden:
        raise UserError(f"config key 'lora_r': {largest} is larger than the model's hidden size {hidden}")


def describe_fields() -> list[tuple[str, str, Any]]:
    """(key, description, default) for every config key, in declaration order."""
    return [(name, field.description or "", field.default) for name, field in JobConfig.model_fields.items()]


def config_reference_markdown() -> str:
    """docs/configuration.md: every key, its default and its meaning, from the schema itself (a test
    fails when the page and the schema disagree; `make docs` writes it again)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from job/config/schema.py by `make docs` (python -m job config-reference --markdown). -->",
        "",
        "A YAML file passed with `--config` (the seed: `configs/tnews_lora_vs_full.yaml`), with `--set KEY=VALUE`",
        "overrides. Every key not given takes its default. Unknown keys, keys written twice, wrong types and",
        "out-of-range values stop the job before anything is loaded or written, naming the key (and the closest",
        "valid key for a typo, or both lines of a repeated key), with exit code 2. YAML 1.2 reads the numbers:",
        "`5e-5` is a float, `010` is ten.",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for key, description, default in describe_fields():
        shown = json.dumps(default, ensure_ascii=False)
        lines.append(f"| `{key}` | `{shown}` | {description.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"
