"""Segmentation heads shared by the models."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtjax import ops


def shot_prototypes(support_feats: jax.Array, support_labels: jax.Array
                    ) -> tuple[jax.Array, jax.Array]:
  """Background and foreground prototypes, averaged over the K shots (per_shot_prototypes'
  mean over its shot axis).

  Args:
    support_feats: [B, K, h, w, D] support features.
    support_labels: [B, K, H, W] labels in {0, 1, 255} at image resolution;
      255 pixels count as neither foreground nor background. The masks are
      resized here to the feature size (area-weighted bilinear).

  Returns:
    (bg [B, D], fg [B, D]); an empty mask gives a zero prototype.
  """
  bg, fg = per_shot_prototypes(support_feats, support_labels)
  return bg.mean(axis=1), fg.mean(axis=1)


def per_shot_prototypes(support_feats: jax.Array, support_labels: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
  """Each shot's own (bg [B, K, D], fg [B, K, D]) prototypes (shot_prototypes before the mean)."""
  b, k, h, w, d = support_feats.shape
  fg, valid = ops.binary_masks(support_labels.reshape(b * k, *support_labels.shape[2:]))
  fg_small = ops.resize_mask(fg, (h, w))
  bg_small = ops.resize_mask(valid - fg, (h, w))
  feats = support_feats.reshape(b * k, h, w, d)
  fg_proto = ops.masked_average_pool(feats, fg_small).reshape(b, k, d)
  bg_proto = ops.masked_average_pool(feats, bg_small).reshape(b, k, d)
  return bg_proto, fg_proto


def prototype_logits(query_feats: jax.Array, bg: jax.Array, fg: jax.Array,
                     scale: float) -> jax.Array:
  """[B, h, w, D] query features, [B, D] prototypes -> [B, h, w, 2] (bg, fg) logits."""
  return ops.cosine_map(query_feats, jnp.stack([bg, fg], axis=1), scale)


NECKS = ('project', 'residual')


class ResidualNeck(nn.Module):
  """Feature stages -> embeddings that start as the stages themselves.

  Each stage is L2-normalised per token and the stages are concatenated, so
  that at initialisation the cosine of two tokens is the mean of their
  per-stage cosines (close to what `prototype` scores, which pools before it
  normalises); a linear map of the channels (a 1x1 conv) of the same width, initialised to zero and
  passed through channel dropout, is added.
  Training thus starts from the training-free matcher and learns a
  correction, instead of replacing the pretrained features by a narrow
  projection.
  """

  dropout: float = 0.0
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, stages: list[jax.Array], *, train: bool) -> jax.Array:
    x = jnp.concatenate([ops.l2_normalize(s) for s in stages], axis=-1)
    # A Dense on the channels (a 1x1 conv): vmapped over episodes (test-time adaptation) it stays a
    # batched matmul, where a conv with per-episode kernels becomes a grouped convolution (slow on CPU).
    delta = nn.Dense(x.shape[-1], use_bias=False, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                     name='correction')(x)
    return x + nn.Dropout(self.dropout, broadcast_dims=(1, 2))(delta, deterministic=not train)
