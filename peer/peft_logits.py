"""Load a job run's PEFT-format adapter (artifacts/<run>/peft, job.training.peft_format) the way a
transformers user would: transformers' ErnieForSequenceClassification with the base weights, then
`PeftModel.from_pretrained`; print its logits for the given token ids as JSON (tests/test_peft_export.py
compares them with the job's own).

Usage: python peer/peft_logits.py BASE.safetensors SHAPE.json ADAPTER_FOLDER INPUTS.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from torch_peft import build_model  # the peer's ERNIE, from this folder

    base, shape_file, adapter, inputs_file = (Path(arg) for arg in sys.argv[1:5])
    shape = json.loads(shape_file.read_text(encoding="utf-8"))
    model = build_model(shape, shape["num_classes"], dropout=0.0)
    missing, unexpected = model.load_state_dict(load_file(str(base)), strict=False)
    if unexpected or [
        name for name in missing if not name.endswith("position_ids") and not name.startswith("classifier.")
    ]:
        raise SystemExit(
            f"base weights do not map: missing {missing}, unexpected {unexpected}"
        )  # the head: the adapter's
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    inputs = json.loads(inputs_file.read_text(encoding="utf-8"))
    input_ids = torch.tensor(inputs["input_ids"])
    with torch.no_grad():  # Paddle's ERNIE masks the padding by itself; transformers' is told where it is
        logits = model(input_ids=input_ids, token_type_ids=torch.tensor(inputs["token_type_ids"]),
                       attention_mask=(input_ids != shape.get("pad_token_id", 0)).long()).logits  # fmt: skip
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main()
