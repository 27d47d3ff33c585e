"""Model registry: config.model.name -> a linen module."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mmtjax.errors import UserError
from mmtjax.models.mmnet import MMNet
from mmtjax.models.mmt import MMT

MODELS = ('mmt', 'baseline', 'mmnet')


def get_model(config: ml_collections.ConfigDict, axis_name: str | None = None) -> nn.Module:
  """Builds the model named by config.model.name: 'mmt', 'baseline' (MMT without memory) or 'mmnet'."""
  m = config.model
  if m.name not in MODELS:
    raise UserError(f'unknown model {m.name!r}; choose from {MODELS}')
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.get('compute_dtype', 'float32')]
  common = dict(backbone=m.backbone, stem=m.stem, output_stride=m.output_stride,
                backbone_bn=m.backbone_bn, axis_name=axis_name, dtype=dtype)
  if m.name == 'mmnet':
    return MMNet(**common, reduce_dim=m.reduce_dim, num_meta_classes=m.num_meta_classes,
                 meta_init_std=m.meta_init_std, bins=tuple(m.bins),
                 bin_reference_size=m.bin_reference_size, mid_dropout=m.mid_dropout,
                 head_dropout=m.head_dropout, prior_stage=m.prior_stage)
  return MMT(**common, memory_stage=m.memory_stage, feature_stages=tuple(m.feature_stages),
             embed_dim=m.embed_dim, dropout=m.dropout, cosine_scale=m.cosine_scale,
             use_memory=m.name == 'mmt', memory=dict(config.memory))
