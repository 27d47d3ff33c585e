"""Model registry: config.model.name -> a linen module."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from mmtjax.models.mmt import MMT

MODELS = ('mmt', 'baseline')


def get_model(config: ml_collections.ConfigDict, axis_name: str | None = None) -> MMT:
  """Builds the model named by config.model.name ('mmt' or 'baseline')."""
  m = config.model
  if m.name not in MODELS:
    raise ValueError(f'unknown model {m.name!r}; choose from {MODELS}')
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.get('compute_dtype', 'float32')]
  return MMT(
      backbone=m.backbone, stem=m.stem, output_stride=m.output_stride,
      backbone_bn=m.backbone_bn, memory_stage=m.memory_stage,
      feature_stages=tuple(m.feature_stages), embed_dim=m.embed_dim, dropout=m.dropout,
      cosine_scale=m.cosine_scale, use_memory=m.name == 'mmt',
      memory=dict(config.memory), axis_name=axis_name, dtype=dtype)
