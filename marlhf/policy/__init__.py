"""The LM actor-critic policy: its model, folder format, log-probabilities and LoRA."""
