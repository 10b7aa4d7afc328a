"""Result records: one typed schema for what a run measured and for results.json, written and read
through the same pydantic models. One JSON file per run (results/<key>.json), written whole (job.output.storage)
as soon as that run finishes, so `job report` can merge them and a killed run never leaves half a file.
Reading and writing the files is job.results.records; the run-level facts are gathered by job.results.facts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

from job.config.schema import JobConfig, StrategyName
from job.data.labels import Labels

# 2: grid runs (seed, learning rate), predictions, macro-F1, comparison; 3: sample; 4: eval batch; 5: labels,
# a comparison per row (Holm); 6: peak memory above the run's own start, one exact test per row over all
# seeds, the interval with the seeds' spread, the non-inferiority answer at a margin, the detectable
# difference, the dev curve and the step selected on dev
SCHEMA_VERSION = 6


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# A share of titles: NaN, a negative or above 1 is no measurement (a record edited or corrupted by hand).
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
# Costs: time, speed, memory and sizes are never negative, NaN or infinite.
Cost = Annotated[NonNegativeFloat, Field(allow_inf_nan=False)]


# ---------------------------------------------------------------- one run


class SplitResult(Record):
    accuracy: Fraction
    loss: float  # mean cross-entropy per example (NaN when training diverged)
    examples: NonNegativeInt
    macro_f1: Fraction
    per_class_accuracy: list[Fraction | None]  # by class id; None where the split has no example of it
    predictions: str  # predicted class id per example, in the split's order (job.results.stats.encode_classes)


class DevPoint(Record):
    """One evaluation of dev during (or at the end of) training."""

    step: NonNegativeInt  # optimizer steps done
    accuracy: Fraction
    loss: float


class ServingForm(Record):
    """What serving one form of a run's model costs on its device (job.training.serving)."""

    form: str  # unmerged (LoRA's adapter applied at every call), merged (folded into the weights), model
    ms_per_title: float  # one title per call, median
    ms_per_batch: float  # a batch of 32 titles, median
    titles_per_second: float  # at batch 32


class MergeAgreement(Record):
    """LoRA's merged and unmerged forms on the same test titles."""

    precision: str
    titles: int
    max_logit_difference: float
    prediction_agreement: float  # share of titles with the same predicted class


class CapacityResult(Record):
    """The largest batch the run's strategy fits in the memory budget (job.training.capacity)."""

    budget_mb: float
    budget_source: str  # memory_budget_mb, or the GPU's memory
    sequence_length: int  # every probed title is this long (max_seq_length: the worst case)
    largest_batch: int  # 0: not one title fits
    granule: int
    peak_allocated_mb: float  # at the largest batch, Paddle's allocator, above what the process held before
    peak_reserved_mb: float | None  # a GPU allocator's reserve at its peak (None on CPU)
    samples_per_second: float  # training at the largest batch
    configured_batch: int
    configured_samples_per_second: float
    probes: list[tuple[int, float | None]]  # (batch, peak allocated MiB; None: out of memory), in order


class RunResult(Record):
    key: str
    index: int  # position in the run plan (the array task index)
    group: str  # headline row
    strategy: StrategyName
    label: str
    seed: int
    learning_rate: float
    batch_size: int
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # training; evaluation is fp32 (older records: fp32)
    tf32: bool = False  # fp32 matmuls ran as TF32 (Paddle's cuBLAS default on compute capability 8.0+)
    eval_batch_size: int  # as resolved for the device (config `auto`: job.runtime.device.resolve_eval_batch_size)
    dropout: str = "paddle"  # the dropout training used (job.training.dropout; older records: Paddle's)
    compiled: bool = False  # the training forward ran as a static graph (config `compile`; older records: no)
    lora_r: int | None
    lora_alpha: int | None
    initial_weights: str  # fingerprint of the weights training started from
    sample: str  # identity of the train, dev and test rows the run saw (job.data.sources.Splits.identity)
    eval_sample: str = ""  # identity of its dev and test rows alone (shared by every training size)
    train_examples: int = 0  # training rows it trained on (a learning curve: its size)
    trainable_params: NonNegativeInt
    total_params: NonNegativeInt
    training_seconds: Cost
    steps: NonNegativeInt
    samples_per_second: Cost
    tokens_per_second: Cost
    peak_memory_mb: Cost  # Paddle's peak tensor allocation above the run's start (job.runtime.memory)
    optimizer_state_mb: Cost
    checkpoint_mb: Cost
    dev: SplitResult
    test: SplitResult
    step_losses: list[float]
    dev_curve: list[DevPoint] = Field(default_factory=list)  # every evaluation of dev, the last one included
    selected_step: int | None = None  # the step whose weights test was scored on and saved (None: the last)
    stopped_early: bool = False  # early_stopping_patience ended training before its last step
    resumed_from_step: int | None = None  # went on from a mid-run checkpoint of this step (job.training.resume)
    # kind of encoder weight -> the effective rank (90% of the energy) of each layer's update, for the
    # strategies that train the encoder's own weights (job.training.update_rank); empty for adapters
    update_rank: dict[str, list[int]] = Field(default_factory=dict)
    update_stable_rank: dict[str, list[float]] = Field(default_factory=dict)  # ‖ΔW‖²_F / ‖ΔW‖²_2 of each
    update_rank_random: dict[str, int] = Field(default_factory=dict)  # a random matrix of the kind's shape
    intruder_dimensions: dict[str, list[int]] = Field(default_factory=dict)  # per kind, each layer's (LoRA too)
    reinitialised_parameters: list[str]
    artifacts: list[str]
    started_at: str = ""  # when the run's model began loading (older records: unknown)
    finished_at: str
    worker: str = ""  # the worker of `job run --workers` that trained it ("w1 gpu:1"); "" for one process
    gpu_shared_by: int = Field(1, ge=1)  # workers on its GPU while it trained (more workers than GPUs): 1 alone
    serving: list[ServingForm] = Field(default_factory=list)  # `serving: true`: each form's latency and throughput
    merge_agreement: list[MergeAgreement] = Field(default_factory=list)  # LoRA's merged against unmerged
    capacity: CapacityResult | None = None  # `capacity: true`, on the first seed's runs
    peak_reserved_mb: float | None = None  # on a GPU, Paddle's allocator's reserve at its peak (None on CPU)


# ---------------------------------------------------------------- what every run of a process shares


class SplitFacts(Record):
    source: str
    examples: int
    labels: str | None = None  # gold class ids (dev and test), in the split's order


class DataFacts(Record):
    train: SplitFacts
    dev: SplitFacts
    test: SplitFacts
    sample_seed: int
    files: dict[str, str]  # file -> sha256 (or PaddleNLP's md5 note)
    labels: list[str]  # each class id's label as the data spells it (TNEWS: 109)
    label_descriptions: list[str] | None  # the task's description of each label (TNEWS: news_tech), if any

    def label_set(self) -> Labels:
        return Labels(tuple(self.labels), tuple(self.label_descriptions) if self.label_descriptions else None)


class DeviceFacts(Record):
    name: str
    description: str
    reason: str


class CpuFacts(Record):
    vendor: str
    strided_views: bool


class RunFacts(Record):
    config: JobConfig  # the whole config, typed; in the files exactly its model_dump
    config_hash: str
    planned_runs: list[str]  # every run key of this config's plan, in order
    device: DeviceFacts
    data: DataFacts
    versions: dict[str, str]
    git_commit: str | None
    threads: dict[str, str | None]
    cpu: CpuFacts
    uid: int | None  # the user the job ran as (never 0 in the images)


class ResultRecord(Record):
    """results/<key>.json"""

    schema_version: Literal[6] = SCHEMA_VERSION
    run: RunFacts
    result: RunResult


# ---------------------------------------------------------------- results.json


class Stat(Record):
    mean: float
    std: float  # sample standard deviation over seeds (0 for one seed)
    n: int


class HeadlineRow(Record):
    """One strategy (and LoRA shape) at the learning rate with the best mean dev accuracy."""

    group: str
    strategy: StrategyName
    label: str
    learning_rate: float
    keys: list[str]  # the runs (one per seed) behind the row
    seeds: list[int]
    dev_accuracy_by_rate: dict[str, float]  # mean dev accuracy of each rate tried: how the rate was chosen
    trainable_params: int
    total_params: int
    training_seconds: Stat
    dev_accuracy: Stat
    test_accuracy: Stat
    dev_loss: Stat
    test_loss: Stat
    dev_macro_f1: Stat
    test_macro_f1: Stat
    test_per_class_accuracy: list[float | None]  # mean over seeds
    step_losses: list[float]  # mean over seeds, per step
    dev_curve: list[DevPoint] = Field(default_factory=list)  # mean over seeds at the steps every seed evaluated
    train_examples: int = 0  # the training rows its runs trained on (a learning curve has several sizes)


Answer = Literal["good enough", "not shown to be good enough", "worse"]


class Comparison(Record):
    """One headline row against the baseline's (full fine-tuning's) chosen row, on the same test titles
    and seeds (job.results.verdict; the statistics in job.results.stats)."""

    group: str  # the headline row compared
    baseline_group: str = ""  # the full fine-tuning row it is compared with (the same training size)
    subject: str  # how the verdict names it: the strategy's title, or the row label in a sweep
    selected: dict[str, list[str]]  # strategy -> the run keys compared (one per seed)
    labels: dict[str, str]
    seeds: list[int]
    test_examples: int
    accuracy_difference: float  # the row minus full fine-tuning, mean over seeds and titles (a fraction)
    seed_differences: dict[str, float]  # seed -> the row minus full fine-tuning on that seed's runs
    accuracy_difference_ci95: tuple[float, float]  # seeds x titles random effects, t (one seed: titles' bootstrap)
    interval_has_seed_variance: bool  # 2 or more seeds: the interval carries training variance
    interval_df: float | None  # the t interval's Satterthwaite degrees of freedom (None: one seed, bootstrap)
    interval_widening: float = 1.0  # its critical value over Student's t's: few seeds widen it (job.results.crossed)
    interval_se: float | None = None  # its standard error (None: one seed)
    bootstrap_resamples: int  # the one-seed interval's (job.results.stats.seed_title_interval)
    bootstrap_seed: int
    p_value: float  # two-sided, of no difference: the interval's own t (one seed: the exact sign-flip test)
    p_value_holm: float  # Holm-adjusted over the rows compared (equal for one row)
    titles_only_p_value: float | None = None  # exact sign-flip test over titles: about these runs only
    good_enough_p_value: float | None = None  # one-sided, of a true difference at or below -margin (2+ seeds)
    good_enough_p_value_holm: float | None = None  # Holm-adjusted over the rows; good enough below 0.025
    compared_rows: int  # how many rows were compared with the baseline (the Holm family)
    discordant: dict[str, tuple[int, int]]  # seed -> (only the row right, only full fine-tuning right)
    directions_agree: bool  # more seeds differ in the pooled difference's direction than against it
    significant: bool  # Holm-adjusted p < 0.05 (one seed: also the seeds agree and the interval excludes 0)
    detectable_difference: float  # true difference found significant with 80% power, at this row's spread
    margin: float  # non-inferiority margin (a fraction, as accuracy_difference)
    noninferior: bool  # good enough: Holm-adjusted one-sided p < 0.025 (one row: the interval's low end > -margin)
    answer: Answer  # good enough (noninferior), worse (wholly below -margin, Holm as well), else not shown
    verdict: str
    # kind of weight -> how much of the row's update lies in full fine-tuning's top-r directions (job.results.overlap)
    subspace_overlap: dict[str, float] = Field(default_factory=dict)
    subspace_random: dict[str, float] = Field(default_factory=dict)  # kind -> a random subspace's: r / d


class Combined(Record):
    schema_version: Literal[6] = SCHEMA_VERSION
    run: RunFacts
    headline: list[HeadlineRow]
    comparison: Comparison | None  # the first compared strategy's (LoRA's) best row on dev
    comparisons: list[Comparison] = Field(default_factory=list)  # every row compared with the baseline
    missing_runs: list[str] = Field(default_factory=list)  # planned but not (yet) in the folder
    runs: list[RunResult]
