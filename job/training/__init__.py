"""Training: the device, the model, the strategies (the registry), the loop and evaluation."""
