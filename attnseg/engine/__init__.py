"""Training loop, checkpoints, inference modes and distributed set-up. Imports data, metrics and models."""
