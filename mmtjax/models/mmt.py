"""MMT: backbone + style memory + prototype head, and the memory-free baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtjax import ops
from mmtjax.errors import UserError
from mmtjax.models import backbones, heads
from mmtjax.models.style_memory import StyleMemory, distinct_count


class MMT(nn.Module):
  """Meta-memory transfer for cross-domain few-shot segmentation.

  The style memory sits on the output of `memory_stage`. In training every
  image passes twice through the stages above it: with its own style and
  re-styled by the memory (least similar item); both branches are segmented.
  At test time `transfer=True` re-styles target features towards the most
  similar stored source style; `transfer=False` skips the memory.
  `use_memory=False` is the baseline: the same network without the memory.

  Attributes:
    backbone: backbone name (see backbones.get_backbone).
    stem: ResNet stem override ('torchvision' or 'deep'), None for default.
    output_stride: 8 or 32.
    backbone_bn: 'batch' (BatchNorm uses and updates batch statistics in
      training) or 'running' (always the running averages).
    memory_stage: stage whose output the memory re-styles.
    feature_stages: stages concatenated (at the finest of their resolutions)
      and projected by a 1x1 conv to `embed_dim` for the prototype head.
    neck_type: 'project' (the stages concatenated, a 1x1 conv to `embed_dim`,
      ReLU, channel dropout) or 'residual' (heads.ResidualNeck: the
      L2-normalised stages plus a zero-initialised linear correction;
      `embed_dim` unused).
    dropout: channel dropout after the projection (Dropout2d), or on the
      residual neck's correction.
    cosine_scale: scale of the cosine logits (PANet: 20).
    memory: keyword arguments of StyleMemory.
    attention: a ViT's attention, 'fused' (jax.nn.dot_product_attention) or 'plain'.

  On a ViT (models/vit.py) the memory re-styles the residual stream's patch
  tokens after `memory_stage` (channel statistics over the patch tokens; the
  cls and register tokens pass unchanged), and the neck reads each feature
  stage through the backbone's readout (the ViT's final LayerNorm).
  """

  backbone: str = 'resnet_tiny'
  stem: str | None = None
  output_stride: int = 8
  backbone_bn: str = 'batch'
  memory_stage: str = 'layer2'
  feature_stages: Sequence[str] = ('layer2', 'layer3')
  embed_dim: int = 64
  neck_type: str = 'project'  # config: model.neck
  dropout: float = 0.5
  cosine_scale: float = 20.0
  use_memory: bool = True
  memory: dict[str, Any] | None = None
  attention: str = 'fused'
  vit_blocks: tuple[int, ...] | None = None  # a ViT's stage ends (backbones.READOUT_DEFAULTS)
  vit_norm: bool = True
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def setup(self):
    if self.backbone_bn not in ('batch', 'running'):
      raise UserError(f"backbone_bn must be 'batch' or 'running', got {self.backbone_bn!r}")
    order = [backbones.STAGES.index(s) for s in self.feature_stages]
    self._last_stage = backbones.STAGES[max(order)]
    if backbones.STAGES.index(self.memory_stage) > max(order):
      raise UserError(f'memory_stage {self.memory_stage!r} lies above every feature stage '
                       f'{tuple(self.feature_stages)}')
    self.encoder = backbones.get_backbone(self.backbone, stem=self.stem,
                                          output_stride=self.output_stride,
                                          axis_name=self.axis_name, dtype=self.dtype,
                                          attention=self.attention, vit_blocks=self.vit_blocks,
                                          vit_norm=self.vit_norm)
    if self.use_memory:
      self.style_memory = StyleMemory(**(self.memory or {}), axis_name=self.axis_name)
    if self.neck_type not in heads.NECKS:
      raise UserError(f'model.neck must be one of {heads.NECKS}, got {self.neck_type!r}')
    if self.neck_type == 'residual':
      self.neck = heads.ResidualNeck(self.dropout, dtype=self.dtype)
    else:
      self.neck = nn.Conv(self.embed_dim, (1, 1), use_bias=False, dtype=self.dtype)
      self.drop = nn.Dropout(self.dropout, broadcast_dims=(1, 2))

  def _encode(self, images, *, train: bool, restyle: str | None, episodes: int, features=None):
    """Images [N, H, W, 3] -> (embeddings [M, h, w, D], orth_loss, diagnostics).

    features: the backbone's stage outputs for the N images, computed before (a frozen
    backbone, feature_cache.py), instead of running it up to memory_stage.

    restyle None: M = N, no memory. 'target': M = N, transferred features.
    'source' (training): M = 2N, the original images then the re-styled ones.
    diagnostics: {'log': scalars to log, 'histograms': [episodes, N] item counts}.
    """
    train_bn = train and self.backbone_bn == 'batch'
    cached_last = features is not None and self._last_stage in features
    if features is None:
      low = self.encoder(images, train_bn=train_bn, stop=self.memory_stage)
    else:  # the frozen backbone's outputs up to memory_stage or beyond (feature_cache.py)
      low = {k: v.astype(self.dtype) for k, v in features.items()}
    orth = jnp.zeros((), jnp.float32)
    diagnostics = {}
    if restyle is not None:
      f = low[self.memory_stage]
      f_new, aux = self.style_memory(f, domain=restyle, train=train)
      orth = aux['orth_loss']
      diagnostics = self._memory_diagnostics(aux, restyle, episodes)
      prefix = backbones.prefix_key(self.memory_stage)  # a ViT's cls + register tokens
      if restyle == 'source':
        # Only the stages the neck reads (and the tokens the next stage needs) serve both branches.
        low = {k: jnp.concatenate([v, v], axis=0) for k, v in low.items()
               if k in self.feature_stages or k == prefix}
        f_new = jnp.concatenate([f, f_new], axis=0)
      low[self.memory_stage] = f_new
    feats = dict(low)
    # The stages after the memory: computed from the (re-styled) memory stage, unless given.
    if self.memory_stage != self._last_stage and (restyle is not None or self._last_stage not in feats):
      start = backbones.STAGES[backbones.STAGES.index(self.memory_stage) + 1]
      x, prefix = low[self.memory_stage], low.get(backbones.prefix_key(self.memory_stage))
      # Training's original branch (the first half) is the fixed backbone's own: from the cache.
      n = x.shape[0] // 2 if restyle == 'source' and cached_last else 0
      later = self.encoder(x[n:], train_bn=train_bn, start=start, stop=self._last_stage,
                           prefix=None if prefix is None else prefix[n:])
      feats.update({k: jnp.concatenate([low[k][:n], v]) if n else v for k, v in later.items()
                    if not n or k in low})
    chosen = [self.encoder.readout(feats[s]) for s in self.feature_stages]
    size = max((x.shape[1:3] for x in chosen), key=lambda hw: hw[0] * hw[1])
    chosen = [ops.resize_features(c, size) for c in chosen]
    if self.neck_type == 'residual':
      return self.neck(chosen, train=train), orth, diagnostics
    x = nn.relu(self.neck(jnp.concatenate(chosen, axis=-1)))
    return self.drop(x, deterministic=not train), orth, diagnostics

  def _memory_diagnostics(self, aux, restyle: str, episodes: int) -> dict:
    """What the memory did: item diversity, distinct items chosen, per-episode item counts."""
    n = self.style_memory.num_items
    item, nearest = aux['item'], aux['nearest']
    if self.axis_name is not None and restyle == 'source':
      # Distinct items over the global batch (the memory's update sees all of it).
      item = jax.lax.all_gather(item, self.axis_name, tiled=True)
      nearest = jax.lax.all_gather(nearest, self.axis_name, tiled=True)
    log = {'memory_diversity': aux['diversity'],
           f'memory_items_{restyle}': distinct_count(item, n),
           'memory_items_nearest': distinct_count(nearest, n)}
    # Images are the B*K supports then the B queries: fold them into episodes.
    onehot = jax.nn.one_hot(aux['item'], n)
    k = aux['item'].shape[0] // episodes - 1
    per_episode = onehot[:episodes * k].reshape(episodes, k, n).sum(1) + onehot[episodes * k:]
    return {'log': log, 'histograms': {f'memory_item_{restyle}': per_episode}}

  def _segment(self, emb, b, k, support_labels):
    """Embeddings of B*K supports then B queries -> (logits [B, h, w, 2], fg [B, D])."""
    h, w, d = emb.shape[1:]
    support = emb[:b * k].reshape(b, k, h, w, d)
    query = emb[b * k:]
    bg, fg = heads.shot_prototypes(support, support_labels)
    return heads.prototype_logits(query, bg, fg, self.cosine_scale).astype(jnp.float32), fg

  def backbone_features(self, images: jax.Array, stop: str) -> dict[str, jax.Array]:
    """The frozen backbone's stage outputs up to `stop` (running statistics; feature_cache.py)."""
    return self.encoder(images.astype(self.dtype), train_bn=False, stop=stop)

  def __call__(self, support_images: jax.Array, support_labels: jax.Array,
               query_images: jax.Array, *, train: bool, transfer: bool = True,
               features: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """One batch of episodes.

    Args:
      support_images: [B, K, H, W, 3] float32 (normalised).
      support_labels: [B, K, H, W] uint8/int32 in {0, 1, 255}.
      query_images: [B, H, W, 3].
      train: training mode (dropout, BatchNorm statistics, memory update).
      transfer: at test time, re-style features with the memory.
      features: the backbone's outputs for the B*K supports then the B queries, up to
        memory_stage (or further), computed before by feature_cache.FeatureCache.

    Returns:
      'logits' [B, h, w, 2] (feature resolution), 'orth_loss' []; in training
      with the memory also 'logits_orig' and the foreground prototypes
      'proto_orig', 'proto_enh' [B, D] of the two branches. With the memory
      in use, 'log' (scalar diagnostics the train step logs) and 'histograms'
      ([B, N] per episode: how often each item was chosen).
    """
    b, k = support_images.shape[:2]
    images = jnp.concatenate([support_images.reshape(b * k, *support_images.shape[2:]),
                              query_images], axis=0).astype(self.dtype)
    if not self.use_memory:
      restyle = None
    elif train:
      restyle = 'source'
    else:
      restyle = 'target' if transfer else None
    emb, orth, diagnostics = self._encode(images, train=train, restyle=restyle, episodes=b, features=features)
    if restyle != 'source':
      logits, _ = self._segment(emb, b, k, support_labels)
      return {'logits': logits, 'orth_loss': orth, **diagnostics}
    n = images.shape[0]
    logits_orig, proto_orig = self._segment(emb[:n], b, k, support_labels)
    logits, proto_enh = self._segment(emb[n:], b, k, support_labels)
    return {'logits': logits, 'logits_orig': logits_orig, 'proto_orig': proto_orig,
            'proto_enh': proto_enh, 'orth_loss': orth, **diagnostics}

  def style_stats(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Channel mean and std [N, C] of images [N, H, W, 3] at the memory stage (eval mode)."""
    low = self.encoder(images.astype(self.dtype), train_bn=False, stop=self.memory_stage)
    return ops.channel_stats(low[self.memory_stage].astype(jnp.float32),
                             (self.memory or {}).get('eps', 1e-5))
