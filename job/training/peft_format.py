"""A LoRA run's adapter in PEFT's own format, for transformers' ERNIE: `adapter_config.json` and
`adapter_model.safetensors`, loadable with `PeftModel.from_pretrained(ErnieForSequenceClassification...,
folder)`. PaddleNLP's ERNIE and transformers' agree numerically once the names are mapped (RULES) and
Paddle's `[in, out]` Linear weights are transposed to torch's `[out, in]`: LoRA's A `[in, r]` becomes PEFT's
`lora_A.weight` `[r, in]`, B `[r, out]` becomes `lora_B.weight` `[out, r]`, and the trained classifier head
is PEFT's `modules_to_save`. The scale is the same in both (alpha / r; alpha / sqrt(r) with rsLoRA).
PiSSA is not exported: its base weight is the residual, not the model's own. Pure Python: the peer's
replay (peer/replay.py, torch) reads the same names from here."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# Each sub-layer of an encoder layer: transformers' name -> PaddleNLP's (written once; RULES follow from it).
LAYER_NAMES = {
    "attention.self.query": "self_attn.q_proj", "attention.self.key": "self_attn.k_proj",
    "attention.self.value": "self_attn.v_proj", "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1", "intermediate.dense": "linear1", "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}  # fmt: skip
RULES = (  # Paddle (PaddleNLP ERNIE) parameter name -> transformers' ERNIE
    (r"ernie\.embeddings\.layer_norm\.", "ernie.embeddings.LayerNorm."),
    *(
        (rf"ernie\.encoder\.layers\.(\d+)\.{re.escape(paddle)}\.", rf"ernie.encoder.layer.\1.{hf}.")
        for hf, paddle in LAYER_NAMES.items()
    ),
)
BACK = (  # transformers' name -> PaddleNLP's, the same map read the other way
    (r"ernie\.embeddings\.LayerNorm\.", "ernie.embeddings.layer_norm."),
    *(
        (rf"ernie\.encoder\.layer\.(\d+)\.{re.escape(hf)}\.", rf"ernie.encoder.layers.\1.{paddle}.")
        for hf, paddle in LAYER_NAMES.items()
    ),
)
# The Hugging Face copy of a PaddleNLP model, where one is published in transformers' ERNIE layout.
HF_BASES = {"ernie-3.0-medium-zh": "nghuyong/ernie-3.0-medium-zh"}
PEFT_FOLDER = "peft"  # artifacts/<run>/peft


def hf_name(paddle_name: str) -> str:
    """transformers' name of a PaddleNLP ERNIE parameter (a LoRAModel's `model.` prefix dropped)."""
    name = paddle_name.removeprefix("model.")
    for pattern, replacement in RULES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    return name


def paddle_name(hf: str) -> str:
    """PaddleNLP's name of a transformers ERNIE parameter (`ernie.` prefixed, as in a classifier)."""
    name = hf if hf.startswith("ernie.") else f"ernie.{hf}"
    for pattern, replacement in BACK:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    return name


def is_linear_weight(paddle_name: str, value: Any) -> bool:
    """A Linear layer's weight, which Paddle stores `[in, out]` and torch `[out, in]`."""
    return value.ndim == 2 and paddle_name.endswith(".weight") and "embeddings" not in paddle_name


def peft_tensors(model: Any) -> dict[str, Any]:
    """The LoRA model's trained tensors under PEFT's saved names, as torch lays them out (numpy arrays)."""
    tensors = {}
    for name, parameter in model.named_parameters():
        if parameter.stop_gradient:
            continue
        value = parameter.numpy()
        layer, _, kind = name.rpartition(".")
        if kind in ("lora_A", "lora_B"):
            tensors[f"base_model.model.{hf_name(layer + '.')}{kind}.weight"] = value.T.copy()
        elif name.removeprefix("model.").startswith("classifier."):
            tensors[f"base_model.model.{hf_name(name)}"] = value.T.copy() if is_linear_weight(name, value) else value
        else:
            raise ValueError(f"{name} has no place in a PEFT LoRA adapter")
    return tensors


def write_peft_adapter(model: Any, folder: Path, base_model: str) -> Path:
    """`folder` with PEFT's adapter_config.json and adapter_model.safetensors for this LoRA model."""
    from safetensors.numpy import save_file

    config = model.lora_config
    # Whole module names: PEFT's short "dense" would also wrap the pooler, which the job's adapter leaves alone.
    targets = sorted({hf_name(name.rpartition(".")[0] + ".").rstrip(".")
                      for name, _ in model.named_parameters() if name.endswith(".lora_A")})  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file(peft_tensors(model), str(folder / "adapter_model.safetensors"))
    settings = {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": config.r, "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout, "use_rslora": bool(config.rslora), "target_modules": targets,
        "modules_to_save": ["classifier"], "bias": "none", "fan_in_fan_out": False, "init_lora_weights": True,
        "inference_mode": True, "base_model_name_or_path": HF_BASES.get(base_model, base_model),
    }  # fmt: skip
    (folder / "adapter_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return folder
