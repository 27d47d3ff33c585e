"""MM-Net, meta-class memory (ICCV 2021), as a method."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections import config_dict

from mmtjax import losses
from mmtjax.feature_cache import DEFAULT_MB as CACHE_MB
from mmtjax.methods.base import Method
from mmtjax.methods.mmt import _dtype
from mmtjax.models import backbones
from mmtjax.models.mmnet import MMNet
from mmtjax.models.vit import ATTENTIONS
from mmtjax.state import backbone_fixed


class MMNetMethod(Method):
  """Frozen backbone, meta-class memory, PFENet prior and FEM head; L = CE_main +
  w_aux mean_bins CE_aux + w_recon L_recon. One evaluation row (the meta-class
  memory is part of the network)."""

  name = 'mmnet'
  eval_modes = {'mmnet': {}}
  adapt_groups = {'head': ('head',), 'neck': ('down_query', 'down_support'), 'meta_classes': ('meta',)}
  adapt_default = ('head',)

  def config(self, variant: str = 'paper') -> dict:
    model = dict(
        name=self.name,
        backbone='resnet50',
        stem='deep',               # PSPNet stem, as PFENet / MM-Net
        output_stride=8,
        backbone_bn='batch',       # the official frozen backbone's BatchNorm runs in train mode
        # True: query + shots in one backbone batch where BatchNorm is per image (same features);
        # off by default: 15-19% slower on XLA:CPU (docs/assumptions.md), unmeasured on GPU.
        joint_backbone=False,
        freeze_backbone=True,
        # PSPNet deep-stem ResNet-50 .pth (PFENet's initmodel/resnet50_v2.pth), read without PyTorch.
        pretrained=config_dict.placeholder(str),
        attention='fused',         # a ViT's attention: 'fused' (jax.nn.dot_product_attention) or 'plain'
        **backbones.readout_fields(),  # a ViT's stage ends and final norm (docs/assumptions.md)
        reduce_dim=256,
        num_meta_classes=50,
        meta_init_std=1.0,
        recon_block=0,             # reconstruction loss's column block; 0 = whole [P, P] (same value)
        bins=(60, 30, 15, 8),      # at 60 x 60 features; scaled to other sizes
        bin_reference_size=60,
        mid_dropout=0.5,
        head_dropout=0.1,
        prior_stage='layer4',      # PFENet's prior from frozen layer4 features
        cache_features_mb=CACHE_MB,  # a fixed backbone's features kept per image (feature_cache.py)
    )
    if variant == 'cpu':
      # The tiny backbone (no pretrained weights, so it trains), a narrower head;
      # the prior from layer3, which trains through the mid-level path.
      model.update(backbone='resnet_tiny', stem=config_dict.placeholder(str), freeze_backbone=config_dict.placeholder(bool),
                   reduce_dim=64, prior_stage='layer3')
    return {'model': model, 'loss': dict(aux=1.0, recon=0.1)}

  def data_config(self, variant: str = 'paper') -> dict:
    """The CPU variant trains its backbone from scratch: with PFENet / MM-Net's own augmentation
    (scale, rotation, blur, flip, crop) it learns features that reach the embedded target
    (chosen on the source validation split: docs/assumptions.md, "MM-Net")."""
    return {'augment': 'mmnet'} if variant == 'cpu' else {}

  def validate(self, config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    m = config.model
    return [
        (all(b >= 1 for b in m.bins), 'model.bins must be positive'),
        (m.num_meta_classes >= 1, 'model.num_meta_classes must be >= 1'),
        (m.get('recon_block', 0) >= 0, 'model.recon_block must be >= 0 (0: the whole [P, P] matrix)'),
        ({'aux', 'recon'} <= set(config.loss), 'loss needs the fields aux and recon for mmnet'),
        (m.get('attention', 'fused') in ATTENTIONS, f'model.attention must be one of {ATTENTIONS}'),
    ]

  def feature_stop(self, config: ml_collections.ConfigDict, *, training: bool) -> str | None:
    """A fixed backbone is cached up to layer3 (the layer4 prior runs on masked supports)."""
    return 'layer3' if backbone_fixed(config.model, training=training) else None

  def build(self, config: ml_collections.ConfigDict, axis_name: str | None = None) -> MMNet:
    m = config.model
    return MMNet(backbone=m.backbone, stem=m.stem, output_stride=m.output_stride, backbone_bn=m.backbone_bn,
                 axis_name=axis_name, dtype=_dtype(config), reduce_dim=m.reduce_dim,
                 num_meta_classes=m.num_meta_classes, meta_init_std=m.meta_init_std,
                 recon_block=m.get('recon_block', 0), bins=tuple(m.bins),
                 bin_reference_size=m.bin_reference_size, mid_dropout=m.mid_dropout,
                 head_dropout=m.head_dropout, prior_stage=m.prior_stage,
                 joint_backbone=m.get('joint_backbone', False), attention=m.get('attention', 'fused'),
                 **backbones.readout_options(m))

  def loss(self, outputs: Mapping[str, Any], query_labels, weights, axis_name):
    del axis_name
    aux = [losses.pixel_cross_entropy(a, query_labels) for a in outputs['aux_logits']]
    terms = {'main': losses.pixel_cross_entropy(outputs['logits'], query_labels),
             'aux': sum(aux) / len(aux), 'recon': outputs['recon_loss']}
    return terms['main'] + weights['aux'] * terms['aux'] + weights['recon'] * terms['recon'], terms
