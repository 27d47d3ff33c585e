"""MM-Net: frozen backbone, PFENet prior mask, meta-class memory and the FEM head.

Data flow for B episodes of K shots (feature size h x w, output stride 8):
  layer2 + layer3 -> 1x1 conv (separate for support and query) -> F [.., 256]
  layer4 of the query, and of the masked support -> prior mask [B, h, w, 1]
  F_q, F_s, support masks -> meta-class memory -> Z [B, h, w, 50]
  concat(Z, prior) -> FEM pyramid (bins scaled to h) -> logits, upsampled to
  the input size with aligned corners; one auxiliary classifier per bin.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtjax import ops
from mmtjax.errors import UserError
from mmtjax.models import backbones
from mmtjax.models.meta_class import COSINE_EPS, MetaClassMemory


def prior_mask(query: jax.Array, support: jax.Array, masks: jax.Array) -> jax.Array:
  """PFENet's training-free prior from high-level features.

  For every query pixel, the highest cosine with any masked support pixel,
  min-max normalised per image (eps 1e-7, so a constant map gives 0, not
  NaN), averaged over the shots.

  Args:
    query: [B, h, w, C] query features.
    support: [B, K, h, w, C] support features (already masked, see MMNet).
    masks: [B, K, h, w] support foreground weights.

  Returns:
    [B, h, w] in [0, 1].
  """
  b, k, h, w, c = support.shape
  q = query.reshape(b, h * w, c).astype(jnp.float32)
  q_norm = jnp.linalg.norm(q, axis=-1)
  priors = []
  for shot in range(k):
    s = (support[:, shot] * masks[:, shot, ..., None]).reshape(b, h * w, c).astype(jnp.float32)
    sim = jnp.einsum('bjc,bic->bji', s, q) / (
        jnp.linalg.norm(s, axis=-1)[:, :, None] * q_norm[:, None, :] + COSINE_EPS)
    best = jnp.max(sim, axis=1)  # Over support pixels j.
    lo, hi = jnp.min(best, axis=1, keepdims=True), jnp.max(best, axis=1, keepdims=True)
    priors.append((best - lo) / (hi - lo + COSINE_EPS))
  return jnp.mean(jnp.stack(priors, axis=1), axis=1).reshape(b, h, w)


def scaled_bins(bins: Sequence[int], reference_size: int, size: int) -> tuple[int, ...]:
  """PFENet's bins (60, 30, 15, 8 for 60 x 60 features) rescaled to `size` (at least 1)."""
  return tuple(max(1, round(b * size / reference_size)) for b in bins)


class ConvReLU(nn.Module):
  """Bias-free conv + ReLU (every conv of the PFENet/MM-Net head)."""
  features: int
  kernel: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pad = self.kernel // 2
    return nn.relu(nn.Conv(self.features, (self.kernel, self.kernel), padding=pad, use_bias=False,
                           dtype=self.dtype)(x))


class Classifier(nn.Module):
  """3x3 conv + ReLU + Dropout2d + 1x1 conv to the classes."""
  features: int
  classes: int = 2
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = ConvReLU(self.features, 3, self.dtype)(x)
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2))(x, deterministic=not train)
    return nn.Conv(self.classes, (1, 1), dtype=self.dtype)(x)


class FEMHead(nn.Module):
  """PFENet's feature-enrichment module over pyramid bins, with per-bin auxiliary classifiers.

  Attributes:
    bins: bin sizes at `reference_size` features (PFENet: 60, 30, 15, 8 at 60).
    reference_size: feature size the bins are given for; other sizes scale them.
    features: head width (256).
  """
  bins: Sequence[int] = (60, 30, 15, 8)
  reference_size: int = 60
  features: int = 256
  classes: int = 2
  dropout: float = 0.1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, list[jax.Array]]:
    """[B, h, w, C] head input -> (logits [B, h, w, classes], aux logits per bin [B, b, b, classes])."""
    h, w = x.shape[1:3]
    sizes = scaled_bins(self.bins, self.reference_size, h)
    pyramid, aux = [], []
    for i, size in enumerate(sizes):
      bin_size = (size, max(1, round(size * w / h)))
      y = ConvReLU(self.features, 1, self.dtype, name=f'init_merge_{i}')(ops.resize_align_corners(x, bin_size))
      if i > 0:
        prev = ops.resize_align_corners(pyramid[-1], bin_size)
        y = ConvReLU(self.features, 1, self.dtype, name=f'alpha_conv_{i}')(
            jnp.concatenate([y, prev], axis=-1)) + y
      z = ConvReLU(self.features, 3, self.dtype, name=f'beta_conv_{i}_0')(y)
      y = ConvReLU(self.features, 3, self.dtype, name=f'beta_conv_{i}_1')(z) + y
      aux.append(Classifier(self.features, self.classes, self.dropout, self.dtype,
                            name=f'inner_cls_{i}')(y, train))
      pyramid.append(ops.resize_align_corners(y, (h, w)))
    y = ConvReLU(self.features, 1, self.dtype, name='res1')(jnp.concatenate(pyramid, axis=-1))
    z = ConvReLU(self.features, 3, self.dtype, name='res2_0')(y)
    y = ConvReLU(self.features, 3, self.dtype, name='res2_1')(z) + y
    return Classifier(self.features, self.classes, self.dropout, self.dtype, name='cls')(y, train), aux


class MMNet(nn.Module):
  """Meta-class memory network for few-shot segmentation.

  Attributes:
    backbone, stem, output_stride, backbone_bn: as in MMT (MM-Net: resnet50,
      deep stem, 8, BatchNorm in batch mode as the official frozen backbone).
    reduce_dim: width of the mid-level features and the head (256).
    num_meta_classes, meta_init_std: the memory (50 items, N(0, 1)).
    recon_block: the reconstruction loss's column block (0: the whole [P, P]
      matrix per image; the value is the same either way).
    bins, bin_reference_size: FEM pyramid (60, 30, 15, 8 at 60 x 60 features).
    mid_dropout: Dropout2d after the mid-level 1x1 convs (0.5).
    head_dropout: Dropout2d in the classifiers (0.1).
    joint_backbone: where BatchNorm uses running statistics (evaluation, or
      backbone_bn 'running'), run the query and the shots through the backbone
      as one batch; with batch statistics they are always separate batches.
    prior_stage: backbone stage of the prior mask: 'layer4' (PFENet, MM-Net),
      or 'layer3' (the CPU variant, whose from-scratch layer4 never trains
      because the prior passes no gradient).
  """

  backbone: str = 'resnet50'
  stem: str | None = 'deep'
  output_stride: int = 8
  backbone_bn: str = 'batch'
  reduce_dim: int = 256
  num_meta_classes: int = 50
  meta_init_std: float = 1.0
  recon_block: int = 0
  bins: Sequence[int] = (60, 30, 15, 8)
  bin_reference_size: int = 60
  mid_dropout: float = 0.5
  head_dropout: float = 0.1
  prior_stage: str = 'layer4'
  joint_backbone: bool = False
  attention: str = 'fused'
  vit_blocks: tuple[int, ...] | None = None  # a ViT's stage ends (backbones.READOUT_DEFAULTS)
  vit_norm: bool = True
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def setup(self):
    if self.backbone_bn not in ('batch', 'running'):
      raise UserError(f"backbone_bn must be 'batch' or 'running', got {self.backbone_bn!r}")
    self.encoder = backbones.get_backbone(self.backbone, stem=self.stem, output_stride=self.output_stride,
                                          axis_name=self.axis_name, dtype=self.dtype,
                                          attention=self.attention, vit_blocks=self.vit_blocks,
                                          vit_norm=self.vit_norm)
    self.down_query = ConvReLU(self.reduce_dim, 1, self.dtype)
    self.down_support = ConvReLU(self.reduce_dim, 1, self.dtype)
    self.mid_drop = nn.Dropout(self.mid_dropout, broadcast_dims=(1, 2))
    self.meta = MetaClassMemory(self.reduce_dim, self.num_meta_classes, self.meta_init_std, self.recon_block)
    self.head = FEMHead(self.bins, self.bin_reference_size, self.reduce_dim, 2, self.head_dropout,
                        self.dtype)

  def _backbone(self, groups: list[jax.Array], train_bn: bool, prefixes: list | None = None,
                **stages) -> list[dict[str, jax.Array]]:
    """The backbone's stages for the query and each shot (`groups`, B images each).

    With BatchNorm on batch statistics (training, backbone_bn 'batch') every
    group is its own batch, as in the official code: the statistics depend on
    the batch. Otherwise BatchNorm is per image and, with joint_backbone,
    the groups share one batch (fewer, larger convolutions; same features).
    """
    prefixes = prefixes or [None] * len(groups)  # a ViT's cls + register tokens, per group
    if train_bn or not self.joint_backbone or len(groups) == 1:
      return [self.encoder(x, train_bn=train_bn, prefix=p, **stages) for x, p in zip(groups, prefixes)]
    joint_prefix = None if prefixes[0] is None else jnp.concatenate(prefixes, axis=0)
    joint = self.encoder(jnp.concatenate(groups, axis=0), train_bn=False, prefix=joint_prefix, **stages)
    b = groups[0].shape[0]
    return [{name: v[i * b:(i + 1) * b] for name, v in joint.items()} for i in range(len(groups))]

  def backbone_features(self, images: jax.Array, stop: str) -> dict[str, jax.Array]:
    """The frozen backbone's stage outputs up to `stop`, per image (feature_cache.py)."""
    return self.encoder(images.astype(self.dtype), train_bn=False, stop=stop)

  def __call__(self, support_images: jax.Array, support_labels: jax.Array,
               query_images: jax.Array, *, train: bool, transfer: bool = True,
               features: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """One batch of episodes (same inputs as MMT; `transfer` has no meaning here).

    `features`: the backbone's outputs up to layer3 for the B*K supports (episode-major) then
    the B queries, computed before (feature_cache.py) instead of running it.

    Returns:
      'logits' [B, H, W, 2] at the input size; 'shot_weights' [B, K, h, w];
      in training also 'aux_logits' [bins, B, H, W, 2] and 'recon_loss' [].
    """
    del transfer
    b, k, hi, wi = support_labels.shape
    train_bn = train and self.backbone_bn == 'batch'
    groups = [query_images.astype(self.dtype)] + [support_images[:, shot].astype(self.dtype)
                                                  for shot in range(k)]
    if features is None:
      feats = self._backbone(groups, train_bn, stop='layer3')
    else:  # regrouped: the queries, then each shot's B supports
      supports = {n: v[:b * k].reshape(b, k, *v.shape[1:]) for n, v in features.items()}
      feats = [{n: v[b * k:].astype(self.dtype) for n, v in features.items()}] + [
          {n: v[:, shot].astype(self.dtype) for n, v in supports.items()} for shot in range(k)]
    h, w = feats[0]['layer3'].shape[1:3]
    read = self.encoder.readout  # a ViT's final LayerNorm; a CNN's map as it is
    mids = [jnp.concatenate([read(f['layer3']), ops.resize_align_corners(read(f['layer2']), (h, w))],
                            axis=-1) for f in feats]

    fg, _ = ops.binary_masks(support_labels)  # [B, K, H, W]; 255 counts as background.
    fg = fg.reshape(b * k, hi, wi)
    masks = ops.resize_align_corners(fg, (h, w)).reshape(b, k, h, w).astype(self.dtype)

    # Prior: layer4 of the query and of each masked support (training-free: no gradient).
    if self.prior_stage == 'layer4':
      inputs = [feats[0]['layer3']] + [feats[1 + shot]['layer3'] * masks[:, shot, ..., None]
                                       for shot in range(k)]
      prefixes = [f.get(backbones.prefix_key('layer3')) for f in feats]
      high = [read(f['layer4']) for f in self._backbone(inputs, train_bn, prefixes, start='layer4')]
    elif self.prior_stage == 'layer3':
      high = [read(f['layer3']) for f in feats]
    else:
      raise UserError(f"prior_stage must be 'layer4' or 'layer3', got {self.prior_stage!r}")
    high = [jax.lax.stop_gradient(x) for x in high]
    hp, wp = high[0].shape[1:3]
    masks_p = ops.resize_align_corners(fg, (hp, wp)).reshape(b, k, hp, wp)
    prior = prior_mask(high[0], jnp.stack(high[1:], axis=1), masks_p)
    prior = ops.resize_align_corners(prior, (h, w))[..., None].astype(self.dtype)

    q = self.mid_drop(self.down_query(mids[0]), deterministic=not train)
    s = jnp.stack([self.mid_drop(self.down_support(m), deterministic=not train) for m in mids[1:]], axis=1)
    z, aux = self.meta(q, s, masks, compute_loss=train)

    logits, aux_logits = self.head(jnp.concatenate([z, prior], axis=-1), train)
    out = {'logits': ops.resize_align_corners(logits, (hi, wi)).astype(jnp.float32),
           'shot_weights': aux['shot_weights']}
    if train:
      out['aux_logits'] = jnp.stack([ops.resize_align_corners(a, (hi, wi)) for a in aux_logits]
                                    ).astype(jnp.float32)
      out['recon_loss'] = aux['recon_loss'].astype(jnp.float32)
    return out
