"""Pretrained weights: PyTorch checkpoints read without PyTorch, converted to Flax."""
