"""Flax modules of the methods; `get_model` builds the one a config names (see mmtjax.methods)."""

from __future__ import annotations

import flax.linen as nn
import ml_collections


def get_model(config: ml_collections.ConfigDict, axis_name: str | None = None) -> nn.Module:
  """The Flax module of the config's method (methods.for_config(config).build)."""
  from mmtjax import methods  # Late: methods import the model modules of this package.
  return methods.for_config(config).build(config, axis_name)
