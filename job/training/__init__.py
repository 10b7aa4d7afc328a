"""Training: the model, the strategies (the registry), the loop and evaluation (the device is job.runtime)."""
