"""Datasets, episode sampling, transforms and the input pipeline."""
