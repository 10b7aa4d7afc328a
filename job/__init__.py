"""ERNIE 3.0 Medium on CLUE TNEWS, another CLUE task or your own data: LoRA vs full fine-tuning, measured."""
