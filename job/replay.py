"""`job replay`: one planned run exported exactly as it trains, so that another framework can replay it
step by step (peer/replay.py does, with Hugging Face transformers + PEFT + torch; `make parity`).

The run goes through the job's own steps (the session's data and tokenizer, the strategy's `prepare`,
the one training loop, the evaluation) with every dropout off, and the folder gets:

- replay.json: the run's resolved settings, the model's shape, every parameter's name, shape and role
  (trains, decays, its learning-rate multiplier), the padded batches in training order, the dev rows,
  and what the job computed: each step's loss and learning rate, and the dev predictions of the final
  weights (through the evaluation path the report uses: LoRA merged, the inference shortcuts);
- initial.safetensors: every parameter of the prepared model before the first step (LoRA's A, PiSSA's
  factors and residual, VeRA's frozen projections and vectors, the head), and under `base.<name>` the
  loaded weights a strategy's `prepare` changed (PiSSA's: the weight before the principal part left it).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from job.config.plan import Run, plan_runs
from job.config.schema import JobConfig
from job.data.batches import collate
from job.errors import UserError
from job.output.log import say
from job.output.storage import open_output
from job.runtime.ranks import Ranks
from job.runtime.signals import StopRequest
from job.training.evaluate import evaluate
from job.training.loop import decayed_parameters, planned_batches, train
from job.training.model import load_model

REPLAY_FILE = "replay.json"
WEIGHTS_FILE = "initial.safetensors"
BASE_PREFIX = "base."
VERSION = 1
SHAPE_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "task_type_vocab_size", "use_task_id", "hidden_act",
    "layer_norm_eps", "pad_token_id",
)  # fmt: skip


def pick_run(runs: list[Run], key: str | None) -> Run:
    """The planned run named `key` (the only one, when the plan has one)."""
    keys = [run.key for run in runs]
    if key is None and len(runs) == 1:
        return runs[0]
    if key in keys:
        return runs[keys.index(key)]
    if key is None:
        raise UserError(f"the plan has {len(runs)} runs: name one with --run ({', '.join(keys)})")
    near = difflib.get_close_matches(key, keys, n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise UserError(f"--run {key!r} is not a planned run ({', '.join(keys)}){hint}")


def without_dropout(model: Any) -> int:
    """Every dropout of the model set to 0 (nn.Dropout layers, attention-weight dropout); returns how many."""
    import paddle

    silenced = 0
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, paddle.nn.Dropout):
            layer.p = 0.0
            silenced += 1
        elif isinstance(layer, paddle.nn.MultiHeadAttention):
            layer.dropout = 0.0
            silenced += 1
    return silenced


def _rows(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"input_ids": row.input_ids, "token_type_ids": row.token_type_ids, "label": row.label} for row in rows]


def export_replay(config: JobConfig, key: str | None, folder: Path, stop: StopRequest) -> Path:
    """Train the run `key` of `config` as `job run` would, dropout off, and write its replay to `folder`."""
    import numpy as np
    import paddle
    from safetensors.numpy import save_file

    from job.pipeline import prepare_model, setup_session

    plan = plan_runs(config)
    chosen = pick_run(plan, key)
    folder.mkdir(parents=True, exist_ok=True)
    session, (run,) = setup_session(config=config, output=open_output(str(folder)), runs=[chosen],
                                     planned=[r.key for r in plan], stop=stop, ranks=Ranks())  # fmt: skip
    rows = session.rows_for(run).encoded
    paddle.seed(run.seed)  # as train_one: the head's and the adapters' initialisation
    loaded = load_model(config.model_name, len(session.labels))
    base = {name: p.numpy().copy() for name, p in loaded.model.named_parameters()}
    model = prepare_model(run, loaded)
    silenced = without_dropout(model)
    named = list(model.named_parameters())
    initial = {name: p.numpy().copy() for name, p in named}
    changed = {}  # an adapter model names the base's weights under its own prefix ("model.")
    for name, value in initial.items():
        before = base.get(name, base.get(name.removeprefix("model.")))
        if before is not None and not np.array_equal(before, value):
            changed[BASE_PREFIX + name] = before
    decayed = decayed_parameters(model)
    parameters = [
        {"name": name, "shape": list(p.shape), "trains": not p.stop_gradient, "decays": name in decayed,
         "rate_multiplier": float(getattr(p, "optimize_attr", {}).get("learning_rate", 1.0))}
        for name, p in named
    ]  # fmt: skip
    settings = run.settings
    epochs = planned_batches(rows.train, settings)
    batches = [
        {key: collate([rows.train[i] for i in batch], session.pad_id)[key].tolist()
         for key in ("input_ids", "token_type_ids", "labels")}
        for epoch in epochs for batch in epoch
    ]  # fmt: skip
    losses: list[float] = []
    rates: list[float] = []

    def record(step: int, loss: float, rate: float) -> None:
        losses.append(loss)
        rates.append(rate)

    paddle.seed(run.seed)  # as train_one: the same draws for every run of this seed
    say(f"[{run.key}] training with dropout off ({silenced} dropouts silenced) for the replay")
    outcome = train(model, rows.train, settings, pad_id=session.pad_id, label=run.key, stop=stop, on_step=record)
    dev = evaluate(model, rows.dev, run.eval_batch_size, session.pad_id, stop)
    shape = {name: getattr(loaded.model.config, name) for name in SHAPE_KEYS if hasattr(loaded.model.config, name)}
    lora = run.lora
    replay = {
        "version": VERSION,
        "key": run.key,
        "label": run.label,
        "strategy": run.strategy.name,
        "adapter": None if lora is None else {
            "r": lora.r, "alpha": lora.alpha, "targets": lora.targets, "target_modules": list(lora.target_modules),
            "rslora": lora.rslora, "plus_ratio": lora.plus_ratio, "pissa": lora.pissa,
        },
        "settings": {
            "seed": run.seed, "learning_rate": settings.learning_rate, "batch_size": settings.batch_size,
            "num_epochs": settings.num_epochs, "max_steps": settings.max_steps, "weight_decay": settings.weight_decay,
            "warmup_ratio": settings.warmup_ratio, "max_grad_norm": settings.max_grad_norm,
            "steps": outcome.steps, "precision": settings.precision,
        },
        "model": shape,
        "classes": len(session.labels),
        "pad_id": session.pad_id,
        "parameters": parameters,
        "batches": batches,
        "dev": _rows(rows.dev),
        "job": {"losses": losses, "learning_rates": rates, "dev_predictions": dev.predictions,
                "dev_accuracy": dev.accuracy},
    }  # fmt: skip
    save_file({**initial, **changed}, str(folder / WEIGHTS_FILE))
    path = folder / REPLAY_FILE
    path.write_text(json.dumps(replay) + "\n", encoding="utf-8")
    say(f"[{run.key}] replay of {outcome.steps} steps written to {folder}")
    return path
