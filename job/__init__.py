"""ERNIE 3.0 Medium on CLUE TNEWS: LoRA vs full fine-tuning, measured and reported."""
