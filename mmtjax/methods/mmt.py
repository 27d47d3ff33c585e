"""MMT, meta-memory transfer ("Remember the Difference", CVPR 2022), as a method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from mmtjax import losses
from mmtjax.errors import finite_number
from mmtjax.feature_cache import DEFAULT_MB as CACHE_MB
from mmtjax.methods.base import Method
from mmtjax.models import backbones, heads, style_memory
from mmtjax.models.mmt import MMT
from mmtjax.models.vit import ATTENTIONS
from mmtjax.state import backbone_fixed


class MMTMethod(Method):
  """Backbone + style memory + prototype head; L = L_pro + w_orth L_orth + w_cont L_cont.

  Evaluated with the memory transfer on (target features moved towards the
  most similar stored source style) and off.
  """

  name = 'mmt'
  eval_modes = {'memory_on': {'transfer': True}, 'memory_off': {'transfer': False}}
  config_sections = ('memory',)
  adapt_groups = {'neck': ('neck',)}  # the 1x1 projection (or correction); the prototype head has no weights
  adapt_default = ('neck',)
  use_memory = True

  def config(self, variant: str = 'paper') -> dict:
    # No MMT value is published for these fields (FACTS.md 1): the demo's
    # values, chosen by measurement, are the defaults (docs/assumptions.md).
    del variant
    sections = {
        'model': dict(
            name=self.name,
            backbone='resnet_tiny',
            stem=config_dict.placeholder(str),  # ResNet stem override: 'torchvision' or 'deep'
            output_stride=8,
            backbone_bn='batch',       # 'batch' or 'running'
            # None: frozen for a ViT, trained for a CNN (the tiny one has no pretrained weights)
            freeze_backbone=config_dict.placeholder(bool),
            pretrained=config_dict.placeholder(str),  # torchvision-style or Meta's DINO .pth
            attention='fused',         # a ViT's attention: 'fused' (jax.nn.dot_product_attention) or 'plain'
            **backbones.readout_fields(),  # a ViT's stage ends and final norm (docs/assumptions.md)
            memory_stage='layer1',
            feature_stages=('layer2', 'layer3'),
            embed_dim=64,
            neck='project',            # or 'residual' (heads.ResidualNeck; docs/assumptions.md)
            dropout=0.1,
            cosine_scale=20.0,
            cache_features_mb=CACHE_MB,  # a frozen backbone's features kept per image (feature_cache.py)
        ),
        'loss': dict(orth=0.1, cont=0.1),
    }
    if self.use_memory:
      sections['memory'] = dict(
          num_items=8, momentum=0.95, alpha=0.5, tau=0.1, eps=1e-5,
          similarity='centered_cosine',  # or 'cosine' (plain; collapses the bank: docs/assumptions.md)
          assignment='nearest',          # or 'batch' (the paper's text: every image updates every item)
          reseed_threshold=0.01)         # usage share under which an item is re-seeded
    return sections

  def validate(self, config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    m, stages = config.model, backbones.STAGES
    known = m.memory_stage in stages and all(s in stages for s in m.feature_stages)
    checks = [
        (m.memory_stage in stages,
         f'model.memory_stage {m.memory_stage!r} is not a stage of the backbone; choose from {stages}'),
        (all(s in stages for s in m.feature_stages), f'model.feature_stages must be stages of the backbone {stages}'),
        (not known or stages.index(m.memory_stage) <= max(stages.index(s) for s in m.feature_stages),
         'model.memory_stage must not lie above every model.feature_stages'),
        ({'orth', 'cont'} <= set(config.loss), f'loss needs the fields orth and cont for {self.name}'),
        (m.get('attention', 'fused') in ATTENTIONS, f'model.attention must be one of {ATTENTIONS}'),
        (m.get('neck', 'project') in heads.NECKS, f'model.neck must be one of {heads.NECKS}'),
    ]
    if self.use_memory:
      mem = config.memory
      checks += [
          (isinstance(mem.num_items, int) and mem.num_items >= 1, 'memory.num_items must be an integer >= 1'),
          (finite_number(mem.momentum) and 0.0 <= mem.momentum < 1.0, 'memory.momentum must be in [0, 1)'),
          (finite_number(mem.alpha) and 0.0 <= mem.alpha <= 1.0, 'memory.alpha must be in [0, 1]'),
          (finite_number(mem.tau) and mem.tau > 0, 'memory.tau must be > 0'),
          (finite_number(mem.eps) and mem.eps > 0, 'memory.eps must be > 0'),
          (mem.get('similarity', 'centered_cosine') in style_memory.SIMILARITIES,
           f'memory.similarity must be one of {style_memory.SIMILARITIES}'),
          (mem.get('assignment', 'batch') in style_memory.ASSIGNMENTS,
           f'memory.assignment must be one of {style_memory.ASSIGNMENTS}'),
          (finite_number(mem.get('reseed_threshold', 0.0)) and 0 <= mem.get('reseed_threshold', 0.0) < 1,
           'memory.reseed_threshold must be in [0, 1) (0: off)'),
      ]
    return checks

  def feature_stop(self, config: ml_collections.ConfigDict, *, training: bool) -> str | None:
    """A fixed backbone is cached up to the last stage the neck reads: what the memory leaves
    as it is (memory off; training's original branch) reads the cache, and only re-styled
    features run the stages after the memory (models.mmt.MMT._encode)."""
    m = config.model
    if not backbone_fixed(m, training=training):
      return None
    stages = list(m.feature_stages) + ([m.memory_stage] if self.use_memory else [])
    return max(stages, key=backbones.STAGES.index)

  def build(self, config: ml_collections.ConfigDict, axis_name: str | None = None) -> MMT:
    m = config.model
    return MMT(backbone=m.backbone, stem=m.stem, output_stride=m.output_stride, backbone_bn=m.backbone_bn,
               axis_name=axis_name, dtype=_dtype(config), memory_stage=m.memory_stage,
               feature_stages=tuple(m.feature_stages), embed_dim=m.embed_dim,
               neck_type=m.get('neck', 'project'), dropout=m.dropout,
               cosine_scale=m.cosine_scale, use_memory=self.use_memory, attention=m.get('attention', 'fused'),
               memory=dict(config.memory) if self.use_memory else None,
               **backbones.readout_options(m))

  def loss(self, outputs: Mapping[str, Any], query_labels, weights, axis_name):
    """With the memory, L_pro is the mean of the cross-entropies of the re-styled and the
    original branch; L_cont compares prototypes across the global batch (gathered over
    `axis_name`), so the parallel loss equals the single-device one."""
    pro = losses.pixel_cross_entropy(outputs['logits'], query_labels)
    if not self.use_memory:
      return pro, {'pro': pro}
    terms = {
        'pro': 0.5 * (pro + losses.pixel_cross_entropy(outputs['logits_orig'], query_labels)),
        'orth': outputs['orth_loss'],
        'cont': losses.contrastive_loss(losses.gather_batch(outputs['proto_orig'], axis_name),
                                        losses.gather_batch(outputs['proto_enh'], axis_name)),
    }
    return terms['pro'] + weights['orth'] * terms['orth'] + weights['cont'] * terms['cont'], terms


def _dtype(config):
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.get('compute_dtype', 'float32')]
