"""Loss terms shared by the methods: pixel cross-entropy (L_pro) and prototype contrast (L_cont).

Each method combines them into its objective (mmtjax.methods).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmtjax import ops


def pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Cross-entropy of [B, h, w, C] logits against [B, H, W] labels, ignoring 255.

  The logits are resized bilinearly to the label size. Each episode's loss is
  the mean over its valid pixels (an episode with none contributes 0); the
  batch loss is the mean over episodes, so averaging per-device losses equals
  the loss of the global batch.
  """
  logits = ops.resize_features(logits.astype(jnp.float32), labels.shape[1:3])
  valid = labels != ops.IGNORE_LABEL
  target = jnp.where(valid, labels, 0).astype(jnp.int32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
  per_episode = jnp.sum(nll * valid, axis=(1, 2)) / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)
  return jnp.mean(per_episode)


def contrastive_loss(p_b: jax.Array, p_t: jax.Array) -> jax.Array:
  """L_cont between original p_b [B, D] and enhanced p_t [B, D] prototypes.

  L = 1/(2B) sum_i -log(pos_i / (pos_i + neg_i)), pos_i = exp(cos(p_b^i, p_t^i)),
  neg_i = sum_{j != i} exp(cos(p_b^i, p_b^j)) + exp(cos(p_b^i, p_t^j)).
  """
  b = p_b.shape[0]
  s_bt = ops.cosine_matrix(p_b, p_t)
  s_bb = ops.cosine_matrix(p_b, p_b)
  off = 1.0 - jnp.eye(b, dtype=s_bt.dtype)
  pos = jnp.diagonal(s_bt)
  # log(pos / (pos + neg)) in log-space: logsumexp over the positive and every negative.
  logits = jnp.concatenate([pos[:, None], jnp.where(off > 0, s_bb, -jnp.inf),
                            jnp.where(off > 0, s_bt, -jnp.inf)], axis=1)
  return jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos) / (2.0 * b)


def gather_batch(x: jax.Array, axis_name: str | None) -> jax.Array:
  """All episodes of the global batch on every device ([B, ...] -> [B * devices, ...])."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)
