"""MMT's meta-memory: a bank of source-domain feature styles (channel statistics).

The bank lives only in the 'memory' variable collection as
`means: [N, C]` and `stds: [N, C]`. It is updated by an exponential moving
average of the batch's channel statistics in training (never by gradients) and
used to re-style features: source features towards the least similar stored
style (augmentation), target features towards the most similar stored style
(transfer), following "Remember the Difference" (CVPR 2022).
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtjax import ops

Domain = Literal['source', 'target']


def similarity_weights(items: jax.Array, stats: jax.Array, tau: float) -> jax.Array:
  """s[j, b] = softmax_b(cos(items_j, stats_b) / tau): [N, C], [B, C] -> [N, B]."""
  return jax.nn.softmax(ops.cosine_matrix(items, stats) / tau, axis=1)


def ema_update(items: jax.Array, stats: jax.Array, momentum: float, tau: float) -> jax.Array:
  """items_j <- momentum * items_j + (1 - momentum) * sum_b s[j, b] stats_b."""
  weights = similarity_weights(items, stats, tau)
  return momentum * items + (1.0 - momentum) * weights @ stats


def orthogonality_loss(means: jax.Array, stds: jax.Array) -> jax.Array:
  """L_orth = (sum_ij h_M[i, j] + sum_ij h_E[i, j]) / (2 N^2), h = |cos| - I."""
  n = means.shape[0]
  eye = jnp.eye(n, dtype=means.dtype)
  h_m = jnp.abs(ops.cosine_matrix(means, means)) - eye
  h_e = jnp.abs(ops.cosine_matrix(stds, stds)) - eye
  return (jnp.sum(h_m) + jnp.sum(h_e)) / (2.0 * n * n)


def select_items(means: jax.Array, stds: jax.Array, mu: jax.Array, std: jax.Array,
                 domain: Domain) -> jax.Array:
  """Index [B] of the memory item used for each image.

  An item is a (mean, std) pair, so its similarity to an image is the sum of
  the cosine of the means and the cosine of the stds. Source: least similar;
  target: most similar.
  """
  score = ops.cosine_matrix(mu, means) + ops.cosine_matrix(std, stds)  # [B, N]
  if domain == 'source':
    return jnp.argmin(score, axis=1)
  if domain == 'target':
    return jnp.argmax(score, axis=1)
  raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")


def restyle(feats: jax.Array, mu: jax.Array, std: jax.Array, item_mean: jax.Array,
            item_std: jax.Array, alpha: float) -> jax.Array:
  """f_enh = (f - mu) / std * (alpha std + (1-alpha) e_k) + alpha mu + (1-alpha) m_k.

  Args:
    feats: [B, H, W, C]; mu, std: [B, C] its channel statistics;
    item_mean, item_std: [B, C] the chosen memory item per image.
  """
  mu_mix = alpha * mu + (1.0 - alpha) * item_mean
  std_mix = alpha * std + (1.0 - alpha) * item_std
  normed = (feats - mu[:, None, None, :]) / std[:, None, None, :]
  return normed * std_mix[:, None, None, :] + mu_mix[:, None, None, :]


def _init_means(key, shape):
  return jax.random.normal(key, shape, jnp.float32)


def _init_stds(key, shape):
  return jnp.abs(jax.random.normal(key, shape, jnp.float32)) + 0.1


class StyleMemory(nn.Module):
  """The style memory: EMA bank of N (mean, std) source styles.

  Attributes:
    num_items: N, the number of stored styles.
    momentum: lambda of the EMA update.
    alpha: weight of the image's own statistics in the mix (1 = identity).
    tau: temperature of the softmax over the batch in the similarity weights.
    eps: added to the variance in the channel statistics.
    axis_name: the pmap axis; when set, the statistics of every device are
      gathered before the EMA step so every replica applies the same update,
      equal to the single-device update on the global batch.
  """

  num_items: int = 8
  momentum: float = 0.9
  alpha: float = 0.5
  tau: float = 0.1
  eps: float = 1e-5
  axis_name: str | None = None

  @nn.compact
  def __call__(self, feats: jax.Array, *, domain: Domain, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Re-styles feats [B, H, W, C]; returns (features, aux).

    aux holds 'orth_loss' (a scalar) and 'item' ([B] the chosen item indices).
    In training on the source domain the bank takes one EMA step first; the
    orthogonality loss is taken on the updated bank, whose gradient reaches
    the features through the batch statistics only (the stored bank is
    stop-gradient).
    """
    shape = (self.num_items, feats.shape[-1])
    means = self.variable('memory', 'means', lambda: _init_means(self.make_rng('params'), shape))
    stds = self.variable('memory', 'stds', lambda: _init_stds(self.make_rng('params'), shape))
    feats32 = feats.astype(jnp.float32)
    mu, std = ops.channel_stats(feats32, self.eps)

    bank_m, bank_e = jax.lax.stop_gradient(means.value), jax.lax.stop_gradient(stds.value)
    if train and domain == 'source' and not self.is_initializing():
      mu_all, std_all = mu, std
      if self.axis_name is not None:
        mu_all = jax.lax.all_gather(mu, self.axis_name, tiled=True)
        std_all = jax.lax.all_gather(std, self.axis_name, tiled=True)
      bank_m = ema_update(bank_m, mu_all, self.momentum, self.tau)
      bank_e = ema_update(bank_e, std_all, self.momentum, self.tau)
      means.value = jax.lax.stop_gradient(bank_m)
      stds.value = jax.lax.stop_gradient(bank_e)
    orth = orthogonality_loss(bank_m, bank_e)

    fixed_m, fixed_e = jax.lax.stop_gradient(bank_m), jax.lax.stop_gradient(bank_e)
    item = select_items(fixed_m, fixed_e, mu, std, domain)
    out = restyle(feats32, mu, std, fixed_m[item], fixed_e[item], self.alpha)
    return out.astype(feats.dtype), {'orth_loss': orth, 'item': item}
