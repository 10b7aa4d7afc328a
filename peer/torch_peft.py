"""The torch + PEFT peer of `job bench`: the same ERNIE 3.0 architecture, the same batches, the same
training step (fp32 AdamW, global-norm clipping, dropout), timed the same way. Runs in its own venv
(`make bench-peer` makes it from peer/requirements.txt): torch is not a dependency of the job.

Input: the batches file `python -m job bench --batches FILE` writes (the window-0 batches of each
headline row it timed: token ids, segment ids, labels, the model's shape and LoRA's settings).
Output: one JSON object per row on stdout: median ms per step and per padded token."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def build_model(shape: dict, classes: int, dropout: float):
    from transformers import ErnieConfig, ErnieForSequenceClassification

    config = ErnieConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"], max_position_embeddings=shape["max_position_embeddings"],
        type_vocab_size=shape["type_vocab_size"], task_type_vocab_size=shape.get("task_type_vocab_size", 3),
        use_task_id=shape.get("use_task_id", False), hidden_act=shape.get("hidden_act", "gelu"),
        layer_norm_eps=shape.get("layer_norm_eps", 1e-12), pad_token_id=shape.get("pad_token_id", 0),
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, classifier_dropout=dropout,
        num_labels=classes,
    )  # fmt: skip
    return ErnieForSequenceClassification(config)


def prepare(model, row: dict):
    """LoRA on ERNIE's q and v projections (HF names query/value) plus the head, or every weight."""
    if row["strategy"] == "full_finetune":
        return model
    from peft import LoraConfig, get_peft_model

    lora = row["adapter"]
    targets = {"attention_qv": ["query", "value"],
               "all_linear": ["query", "key", "value", "attention.output.dense", "intermediate.dense",
                              "output.dense"]}[lora["targets"]]  # fmt: skip
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=targets,
                        modules_to_save=["classifier"])  # fmt: skip
    return get_peft_model(model, config)


def time_row(row: dict, shape: dict, warmup: int) -> dict:
    import torch

    torch.manual_seed(row["seed"])
    model = prepare(build_model(shape, row["classes"], row["dropout"]), row)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=row["learning_rate"], weight_decay=row["weight_decay"])
    times, tokens = [], []
    for index, batch in enumerate(row["batches"]):
        input_ids = torch.tensor(batch["input_ids"])
        token_type_ids = torch.tensor(batch["token_type_ids"])
        labels = torch.tensor(batch["labels"])
        started = time.perf_counter()
        logits = model(input_ids=input_ids, token_type_ids=token_type_ids).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, row["max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # waits for the step, as the job's bench does
        if index >= warmup:
            times.append(time.perf_counter() - started)
            tokens.append(input_ids.numel())
    median = statistics.median(times)
    return {
        "group": row["group"], "strategy": row["strategy"], "timed_steps": len(times),
        "median_ms_per_step": round(1000 * median, 2), "tokens_per_step": statistics.mean(tokens),
        "ms_per_token": round(1000 * median / statistics.mean(tokens), 4),
        "trainable_params": sum(p.numel() for p in trainable),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", help="the file `python -m job bench --batches FILE` wrote")
    arguments = parser.parse_args()
    import torch

    with open(arguments.batches, encoding="utf-8") as stream:
        spec = json.load(stream)
    torch.set_num_threads(spec["threads"])
    print(json.dumps({"peer": f"torch {torch.__version__}", "threads": torch.get_num_threads()}), file=sys.stderr)
    for row in spec["rows"]:
        if row["strategy"] not in ("lora", "full_finetune"):
            continue  # the peer has no counterpart of the job's other methods here
        print(json.dumps(time_row(row, spec["model"], spec["warmup"])), flush=True)


if __name__ == "__main__":
    main()
