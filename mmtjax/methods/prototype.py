"""Training-free prototype matching on a frozen pretrained backbone, as a method.

The floor every trained method must beat: masked average pooling of each
support's foreground and background tokens at the chosen stage(s), the shots'
prototypes averaged, the cosine of every query token to both, foreground where
it wins. Several stages combine by averaging their cosine maps (at the finest
of their sizes), or, with `choose_stages`, only the stages that predict the episode's own
supports best (per episode, gradient-free: each support from the others, and for one shot the
support and its copy-paste copies, copy_paste.py; HERA's per-episode layer choice). No
parameter is trained: evaluate.py and mmtjax.predict build
it from the config and model.pretrained alone, and train.py says it needs no
training. The foundation-model few-shot segmenters of 2025-2026 (FSSDINO:
training-free on a frozen DINOv3) start from this.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmtjax import copy_paste, ops
from mmtjax.feature_cache import DEFAULT_MB as CACHE_MB
from mmtjax.methods.base import Method
from mmtjax.methods.mmt import _dtype
from mmtjax.models import backbones, heads
from mmtjax.models.vit import ATTENTIONS


class PrototypeMatcher(nn.Module):
  """Frozen backbone + per-stage prototypes + cosine; no trainable parameter of its own.

  Attributes:
    backbone, stem, output_stride, attention, vit_blocks, vit_norm: the backbone
      and what its stages read (models.backbones.get_backbone).
    feature_stages: stages whose cosine maps are averaged.
    cosine_scale: the logits are scale x cosine (the decision, argmax, does not depend on it;
      the foreground probability does).
    choose_stages: 0: every feature stage's cosine map averaged; n >= 1: per episode, the n
      stages whose leave-one-out foreground IoU on the supports is highest (one shot: on the
      support and `pseudo_shots` copy-paste copies of it, drawn from the episode's seed).
    pseudo_shots: the copies a 1-shot episode's choice scores on.
  """

  backbone: str = 'dinov2_vits14'
  stem: str | None = None
  output_stride: int = 8
  feature_stages: Sequence[str] = ('layer4',)
  cosine_scale: float = 20.0
  choose_stages: int = 0
  pseudo_shots: int = 2
  attention: str = 'fused'
  vit_blocks: tuple[int, ...] | None = None
  vit_norm: bool = True
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = backbones.get_backbone(self.backbone, stem=self.stem, output_stride=self.output_stride,
                                          dtype=self.dtype, attention=self.attention,
                                          vit_blocks=self.vit_blocks, vit_norm=self.vit_norm)

  def backbone_features(self, images: jax.Array, stop: str) -> dict[str, jax.Array]:
    """The backbone's stage outputs up to `stop` (feature_cache.py)."""
    return self.encoder(images.astype(self.dtype), train_bn=False, stop=stop)

  def __call__(self, support_images: jax.Array, support_labels: jax.Array, query_images: jax.Array, *,
               train: bool, transfer: bool = True, features: dict[str, jax.Array] | None = None,
               seeds: jax.Array | None = None) -> dict[str, jax.Array]:
    """support_images [B, K, H, W, 3], support_labels [B, K, H, W] in {0, 1, 255},
    query_images [B, H, W, 3] -> {'logits': [B, h, w, 2] (bg, fg) at the finest stage's size,
    'stage_scores': [B, S] (with choose_stages: each stage's leave-one-out IoU)};
    `features`: the backbone's outputs for the supports then the queries (feature_cache.py);
    `seeds`: [B] episode seeds, the copies' keys (None: 0)."""
    del train, transfer
    b, k = support_images.shape[:2]
    images = jnp.concatenate([support_images.reshape(b * k, *support_images.shape[2:]), query_images],
                             axis=0).astype(self.dtype)
    last = max(self.feature_stages, key=backbones.STAGES.index)
    # Running statistics for a CNN's BatchNorm: nothing here may depend on the batch.
    feats = self.encoder(images, train_bn=False, stop=last) if features is None else features
    shots = (support_labels, None)
    if self.choose_stages and k == 1:
      shots = self._pseudo_shots(support_images, support_labels, seeds, last)
    maps, scores = [], []
    for stage in self.feature_stages:
      x = self.encoder.readout(feats[stage]).astype(jnp.float32)
      h, w, d = x.shape[1:]
      support = x[:b * k].reshape(b, k, h, w, d)
      bg, fg = heads.shot_prototypes(support, support_labels)
      maps.append(heads.prototype_logits(x[b * k:], bg, fg, 1.0))
      if self.choose_stages:
        labels, extra = shots
        if extra is not None:
          extra = self.encoder.readout(extra[stage]).astype(jnp.float32)
          support = jnp.concatenate([support, extra.reshape(b, -1, h, w, d)], axis=1)
        scores.append(leave_one_out_iou(support, labels))
    size = max((m.shape[1:3] for m in maps), key=lambda hw: hw[0] * hw[1])
    maps = jnp.stack([ops.resize_features(m, size) for m in maps], axis=1)  # [B, S, h, w, 2]
    if not self.choose_stages:
      return {'logits': self.cosine_scale * jnp.mean(maps, axis=1)}
    scores = jnp.stack(scores, axis=1)  # [B, S]
    n = min(self.choose_stages, len(self.feature_stages))
    chosen = jax.nn.one_hot(jax.lax.top_k(scores, n)[1], scores.shape[1]).sum(1) / n
    return {'logits': self.cosine_scale * jnp.einsum('bs,bshwc->bhwc', chosen, maps), 'stage_scores': scores}

  def _pseudo_shots(self, support_images, support_labels, seeds, last):
    """(the support and its copies' labels [B, 1 + n, H, W], the copies' backbone outputs)."""
    b = support_images.shape[0]
    seeds = jnp.zeros((b,), jnp.int32) if seeds is None else seeds
    keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(0), s))(seeds)
    images, labels = jax.vmap(lambda key, x, y: copy_paste.with_copies(key, x, y, self.pseudo_shots))(
        keys, support_images, support_labels)
    extra = images[:, 1:].reshape(b * self.pseudo_shots, *images.shape[2:]).astype(self.dtype)
    return labels, self.encoder(extra, train_bn=False, stop=last)


def leave_one_out_iou(support: jax.Array, labels: jax.Array) -> jax.Array:
  """[B] mean foreground IoU of each of K >= 2 shots ([B, K, h, w, D] features, [B, K, H, W]
  labels) predicted by prototype matching from the other K - 1 (their prototypes' mean)."""
  b, k, h, w, d = support.shape
  bg, fg = heads.per_shot_prototypes(support, labels)
  others = lambda p: (p.sum(1, keepdims=True) - p) / (k - 1)  # noqa: E731
  protos = jnp.stack([others(bg), others(fg)], axis=2).reshape(b * k, 2, d)
  logits = ops.cosine_map(support.reshape(b * k, h, w, d), protos)
  return copy_paste.foreground_iou(logits, labels.reshape(b * k, *labels.shape[2:])).reshape(b, k).mean(1)


class PrototypeMethod(Method):
  """Prototype matching with no training (model.pretrained required)."""

  name = 'prototype'
  eval_modes = {'prototype': {}}
  trainable = False

  def config(self, variant: str = 'paper') -> dict:
    # The same network for both variants: a frozen DINOv2 ViT-S/14 read at block 10 of 12, raw
    # (no final norm): the best of blocks 6-12, normed or raw, and of combinations of blocks 8-10
    # on CamVid's validation split (docs/assumptions.md, "Real images"). A deeper ViT needs
    # its own model.vit_blocks (e.g. ViT-L/14: (6, 12, 18, 20)).
    del variant
    return {'model': dict(
        name=self.name,
        backbone='dinov2_vits14',
        stem=None,
        output_stride=8,
        freeze_backbone=True,
        pretrained=ml_collections.config_dict.placeholder(str),  # Meta's DINOv2/v3 .pth (or a CNN's)
        attention='fused',
        **{**backbones.readout_fields(), 'vit_blocks': (3, 6, 9, 10), 'vit_norm': False},
        feature_stages=('layer4',),
        cosine_scale=20.0,
        choose_stages=0,  # per episode, the n best of feature_stages (0: all averaged)
        pseudo_shots=2,  # the copies a 1-shot episode's choice scores on (HERA: 2)
        cache_features_mb=CACHE_MB,  # its backbone's features kept per image (feature_cache.py)
    )}

  def validate(self, config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    m, stages = config.model, backbones.STAGES
    return [
        (bool(m.get('pretrained')), 'model prototype is training-free: it needs pretrained backbone weights, '
                                    'e.g. --config.model.pretrained=~/weights/dinov2_vits14_pretrain.pth'),
        (len(m.feature_stages) >= 1 and all(s in stages[1:] for s in m.feature_stages),
         f'model.feature_stages must be stages of the backbone among {stages[1:]}'),
        (m.get('freeze_backbone') in (None, True), 'model prototype trains nothing: model.freeze_backbone '
                                                  'must stay True'),
        (m.get('attention', 'fused') in ATTENTIONS, f'model.attention must be one of {ATTENTIONS}'),
        (isinstance(m.get('choose_stages', 0), int) and 0 <= m.get('choose_stages', 0),
         'model.choose_stages must be an integer >= 0 (0: every feature stage averaged)'),
        (not m.get('choose_stages', 0) or len(m.feature_stages) >= 2,
         'model.choose_stages chooses among model.feature_stages: name at least two, e.g. '
         '--config.model.feature_stages=layer1,layer2,layer3,layer4'),
        (isinstance(m.get('pseudo_shots', 2), int) and m.get('pseudo_shots', 2) >= 1,
         'model.pseudo_shots must be an integer >= 1'),
    ]

  def apply(self, model, variables, batch, *, train, mode=None, **apply_kwargs):
    """Method.apply, with the episodes' seeds (the 1-shot choice's copies are drawn from them)."""
    if 'episode_seed' in batch:
      apply_kwargs = {**apply_kwargs, 'seeds': batch['episode_seed']}
    return super().apply(model, variables, batch, train=train, mode=mode, **apply_kwargs)

  def feature_stop(self, config: ml_collections.ConfigDict, *, training: bool) -> str | None:
    """Its backbone never changes: cached up to the last stage it reads."""
    return max(config.model.feature_stages, key=backbones.STAGES.index)

  def build(self, config: ml_collections.ConfigDict, axis_name: str | None = None) -> PrototypeMatcher:
    m = config.model
    return PrototypeMatcher(backbone=m.backbone, stem=m.get('stem'), output_stride=m.output_stride,
                            feature_stages=tuple(m.feature_stages), cosine_scale=m.cosine_scale,
                            choose_stages=m.get('choose_stages', 0), pseudo_shots=m.get('pseudo_shots', 2),
                            attention=m.get('attention', 'fused'), axis_name=axis_name, dtype=_dtype(config),
                            **backbones.readout_options(m))

  def loss(self, outputs: Mapping[str, Any], query_labels, weights, axis_name):
    raise NotImplementedError('model prototype is training-free: it has no loss')
