"""A small transformers ERNIE saved as a Hugging Face checkpoint would come (config.json, model.safetensors,
vocab.txt), and its outputs for given token ids, for tests/test_import_hf.py: the job's `import-hf` must
give the same outputs from it.

Usage: python peer/hf_ernie.py FOLDER INPUTS.json"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import torch
    from transformers import ErnieConfig, ErnieModel

    folder, inputs_file = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    config = ErnieConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, type_vocab_size=4, use_task_id=True,
                         task_type_vocab_size=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    model = ErnieModel(config)
    with torch.no_grad():  # LayerNorm scales and biases away from 1 and 0, so a swapped pair would show
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokens = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"] + [f"t{i}" for i in range(55)]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    inputs = json.loads(inputs_file.read_text(encoding="utf-8"))
    ids = torch.tensor(inputs["input_ids"])
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=torch.tensor(inputs["token_type_ids"]),
                    attention_mask=(ids != 0).long())  # fmt: skip
    print(json.dumps({"sequence": out.last_hidden_state.tolist(), "pooled": out.pooler_output.tolist()}))


if __name__ == "__main__":
    main()
