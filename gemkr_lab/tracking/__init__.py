"""Experiment tracking: Weights & Biases, offline first (`wandb sync` uploads later)."""
