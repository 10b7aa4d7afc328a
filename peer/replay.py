"""The torch side of `make parity`: replays a run the job exported (`python -m job replay`) with Hugging
Face transformers' ERNIE, PEFT's own config for each strategy PEFT has, torch's AdamW and transformers'
linear warm-up schedule, and writes what it computed beside the replay (peer.json). Runs in the peer venv
(peer/requirements.txt): torch is not a dependency of the job.

What is the peer's own and what it takes from the replay:
- its own: the model (transformers' ErnieForSequenceClassification from the replay's shape, every dropout
  0), each adapter (peft.LoraConfig with use_rslora / init_lora_weights="pissa"; peft.VeraConfig;
  peft.LoKrConfig; LoRA+ through peft.optimizers.create_loraplus_optimizer), which parameters decay
  (transformers' rule: every trainable weight but biases and LayerNorm's), the schedule
  (get_linear_schedule_with_warmup, warm-up steps ceil(ratio x steps) as transformers' Trainer counts them),
  clipping (torch.nn.utils.clip_grad_norm_), the loss, the evaluation (plain forward, no merging);
- from the replay: the initial weights (Paddle's Linear weights are [in, out]: transposed), the random
  starts PEFT would draw otherwise (LoRA's A, VeRA's projections, LoKr's factors), the padded batches in
  order, the settings.

Named differences the replay states and the peer follows (docs/how-it-works.md, "Parity"): the job's
PiSSA (PaddleNLP's) trains at scale 1 and keeps its factors out of weight decay; its VeRA has a pair of
projections per layer (PEFT shares one); its LoRA+ gives B's rate to B alone (PEFT's helper also to
every one-dimensional parameter: `--as-peft` replays that too).

Usage: python peer/replay.py FOLDER [--as-peft]"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the job's own name map: no Paddle needed for it
from job.training.peft_format import hf_name, is_linear_weight

BASE_PREFIX = "base."
ADAPTER_WEIGHTS = ("lora_A", "lora_B", "vera_A", "vera_B", "vera_b", "vera_d", "lokr_w1", "lokr_w2", "lokr_w1_a",
                   "lokr_w1_b", "lokr_w2_a", "lokr_w2_b")  # fmt: skip


def build_model(replay: dict, weights: dict):
    """transformers' ERNIE with the replay's base weights (before any strategy touched them)."""
    import torch
    from torch_peft import build_model as ernie  # the bench peer's model, from the same folder

    model = ernie(replay["model"], replay["classes"], dropout=0.0)
    state = {}
    for name, value in weights.items():
        if name.startswith(BASE_PREFIX) or name.rsplit(".", 1)[-1] in ADAPTER_WEIGHTS:
            continue
        original = weights.get(BASE_PREFIX + name, value)  # PiSSA's weight before its principal part left
        state[hf_name(name)] = torch.from_numpy(original.T.copy() if is_linear_weight(name, original) else original)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if not name.endswith("position_ids")]:
        raise SystemExit(f"weights do not map: missing {missing}, unexpected {unexpected}")
    return model


def adapted_modules(replay: dict) -> list[str]:
    """transformers' names of the Linear layers the job's adapter wraps."""
    layers = {p["name"].rsplit(".", 1)[0] for p in replay["parameters"] if p["name"].endswith(".lora_A")
              or p["name"].endswith(".vera_b") or ".lokr_w" in p["name"]}  # fmt: skip
    return sorted(hf_name(layer + ".").removesuffix(".") for layer in layers)


def prepare(model, replay: dict, weights: dict) -> tuple[object, dict]:
    """PEFT's adapter for the replay's strategy (or requires_grad, for strategies without one), with the
    job's random starts copied in; returns the model and what was checked on the way."""
    import torch

    strategy, adapter = replay["strategy"], replay["adapter"]
    checks: dict = {}
    if strategy in ("full_finetune", "bitfit", "head_only"):
        for name, parameter in model.named_parameters():
            parameter.requires_grad = (
                strategy == "full_finetune" or name.startswith("classifier.")
                or (strategy == "bitfit" and name.endswith(".bias"))
            )  # fmt: skip
        return model, checks
    from peft import LoKrConfig, LoraConfig, VeraConfig, get_peft_model

    targets = adapted_modules(replay)
    r = adapter["r"]
    if strategy == "lora":
        config = LoraConfig(
            r=r, lora_alpha=r if adapter["pissa"] else adapter["alpha"], lora_dropout=0.0, target_modules=targets,
            use_rslora=adapter["rslora"], init_lora_weights="pissa" if adapter["pissa"] else True,
            modules_to_save=["classifier"],
        )  # fmt: skip
    elif strategy == "vera":
        config = VeraConfig(
            r=r, target_modules=targets, vera_dropout=0.0, d_initial=0.1, modules_to_save=["classifier"]
        )
    elif strategy == "lokr":
        config = LoKrConfig(r=r, alpha=r, target_modules=targets, modules_to_save=["classifier"])
    else:
        raise SystemExit(f"no PEFT counterpart for strategy {strategy!r}")
    model = get_peft_model(model, config)
    modules = dict(model.named_modules())
    head = {name: value for name, value in weights.items() if name.removeprefix("model.").startswith("classifier.")}
    with torch.no_grad():
        for name, value in head.items():  # the job's head, in PEFT's trainable copy
            leaf = name.removeprefix("model.").split(".")[-1]
            target = modules["base_model.model.classifier.modules_to_save.default"]
            getattr(target, leaf).copy_(torch.from_numpy(value.T.copy() if value.ndim == 2 else value))
        differences = []
        for name, value in weights.items():
            kind = name.rsplit(".", 1)[-1]
            if name.startswith(BASE_PREFIX) or kind not in ADAPTER_WEIGHTS:
                continue
            layer = modules["base_model.model." + hf_name(name.rsplit(".", 1)[0] + ".").removesuffix(".")]
            job = torch.from_numpy(value.copy())
            if kind in ("lora_A", "lora_B"):
                mine = getattr(layer, kind)["default"].weight
                if adapter["pissa"]:  # PEFT's own SVD: the same subspace, each vector's sign free
                    differences.append(float((mine.abs() - job.T.abs()).abs().max()))
                    continue
                mine.copy_(job.T)
            elif kind in ("vera_A", "vera_B"):  # one pair per layer, as the job's (PEFT shares one across layers)
                from peft.tuners._buffer_dict import BufferDict

                setattr(layer, kind, BufferDict({"default": job.T.contiguous()}, persistent=True))
            elif kind in ("vera_b", "vera_d"):
                getattr(layer, "vera_lambda_" + kind[-1])["default"].copy_(job)
            else:  # LoKr: PaddleNLP keeps LyCORIS's [out, in] factor layout, as PEFT does
                mine = getattr(layer, kind)["default"]
                if tuple(mine.shape) != tuple(job.shape):
                    raise SystemExit(f"{name}: PEFT's factor is {tuple(mine.shape)}, the job's {tuple(job.shape)}")
                mine.copy_(job)
        if differences:
            checks["pissa_factor_max_abs_difference"] = max(differences)
    return model, checks


def decayed_names(model) -> set[str]:
    """transformers' Trainer rule: every parameter but biases and LayerNorm's weights decays."""
    from transformers.pytorch_utils import ALL_LAYERNORM_LAYERS
    from transformers.trainer_pt_utils import get_parameter_names

    return {name for name in get_parameter_names(model, ALL_LAYERNORM_LAYERS) if "bias" not in name}


def optimizer_for(model, replay: dict, as_peft: bool):
    import torch

    settings, adapter = replay["settings"], replay["adapter"]
    rate, decay = settings["learning_rate"], settings["weight_decay"]
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    pissa = bool(adapter and adapter["pissa"])
    adamw = torch.optim.AdamW
    ratio = adapter.get("plus_ratio", 1.0) if adapter else 1.0
    if ratio != 1.0:
        from peft.optimizers import create_loraplus_optimizer

        optimizer = create_loraplus_optimizer(model, adamw, lr=rate, loraplus_lr_ratio=ratio,
                                              loraplus_weight_decay=decay)  # fmt: skip
        if not as_peft:  # B's rate to B alone, as the LoRA+ paper and the job: the others back at the base rate
            names, named = {id(p): name for name, p in trainable}, decayed_names(model)
            moved = []
            for group in optimizer.param_groups:
                if group["lr"] == rate * ratio:
                    moved += [p for p in group["params"] if "lora_B" not in names[id(p)]]
                    group["params"] = [p for p in group["params"] if "lora_B" in names[id(p)]]
            for decays in (True, False):
                chosen = [p for p in moved if (names[id(p)] in named) == decays]
                if chosen:
                    optimizer.add_param_group({"params": chosen, "lr": rate, "weight_decay": decay if decays else 0.0})
        return optimizer
    named = decayed_names(model)
    decayed = {name for name, _ in trainable if name in named and not (pissa and "lora_" in name)}  # PiSSA: named
    groups = [
        {"params": [p for name, p in trainable if name in decayed], "weight_decay": decay},
        {"params": [p for name, p in trainable if name not in decayed], "weight_decay": 0.0},
    ]
    return adamw([g for g in groups if g["params"]], lr=rate)


def replay_run(folder: Path, as_peft: bool = False) -> dict:
    import torch
    from safetensors.numpy import load_file
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    replay = json.loads((folder / "replay.json").read_text(encoding="utf-8"))
    weights = load_file(str(folder / "initial.safetensors"))
    model, checks = prepare(build_model(replay, weights), replay, weights)
    settings = replay["settings"]
    trainable = [p for p in model.parameters() if p.requires_grad]
    checks["trainable_params"] = sum(p.numel() for p in trainable)
    checks["job_trainable_params"] = sum(math.prod(p["shape"]) for p in replay["parameters"] if p["trains"])
    optimizer = optimizer_for(model, replay, as_peft)
    steps = len(replay["batches"])
    warmup = math.ceil(settings["warmup_ratio"] * steps)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, steps)
    pad = replay["pad_id"]
    model.train()
    losses, rates = [], []
    for batch in replay["batches"]:
        input_ids = torch.tensor(batch["input_ids"])
        rates.append(schedule.get_last_lr()[0])
        logits = model(input_ids=input_ids, token_type_ids=torch.tensor(batch["token_type_ids"]),
                       attention_mask=(input_ids != pad).long()).logits  # fmt: skip
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(batch["labels"]))
        loss.backward()
        if settings["max_grad_norm"] > 0:
            torch.nn.utils.clip_grad_norm_(trainable, settings["max_grad_norm"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    predictions = []
    with torch.no_grad():
        for start in range(0, len(replay["dev"]), 64):
            rows = replay["dev"][start : start + 64]
            width = max(len(row["input_ids"]) for row in rows)
            input_ids = torch.tensor([row["input_ids"] + [pad] * (width - len(row["input_ids"])) for row in rows])
            segments = torch.tensor(
                [row["token_type_ids"] + [0] * (width - len(row["token_type_ids"])) for row in rows]
            )
            logits = model(
                input_ids=input_ids, token_type_ids=segments, attention_mask=(input_ids != pad).long()
            ).logits
            predictions += logits.argmax(-1).tolist()
    return {"losses": losses, "learning_rates": rates, "warmup_steps": warmup, "dev_predictions": predictions,
            "as_peft": as_peft, "checks": checks}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--as-peft", action="store_true", help="LoRA+: PEFT's parameter groups as they are")
    parser.add_argument("--output", type=Path, default=None, help="default: FOLDER/peer.json")
    args = parser.parse_args()
    result = replay_run(args.folder, args.as_peft)
    (args.output or args.folder / "peer.json").write_text(json.dumps(result) + "\n", encoding="utf-8")
    json.dump({key: value for key, value in result.items() if key != "dev_predictions"}, sys.stdout)


if __name__ == "__main__":
    main()
