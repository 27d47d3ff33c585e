"""MMT's meta-memory: a bank of source-domain feature styles (channel statistics).

The bank lives only in the 'memory' variable collection:
  means, stds: [N, C]   the N stored styles (m_j, e_j);
  center_mean, center_std: [C]  running source averages the similarities are
                        measured from (`similarity='centered_cosine'`);
  usage: [N]            running share of source images whose nearest item is j;
  initialized: []       0 until the first training update seeds the bank.
It is updated by an exponential moving average of the batch's channel
statistics in training (never by gradients) and used to re-style features:
source features towards the least similar stored style (augmentation), target
features towards the most similar stored style (transfer), following
"Remember the Difference" (CVPR 2022).

Why the centre (docs/assumptions.md): channel means and stds of post-ReLU
features are all positive, so their plain cosines are all close to 1, the
softmax over the batch is uniform and every item is pulled to the batch mean:
the bank collapses into one style. Cosines of statistics measured from the
running source average tell styles apart; `similarity='cosine'` keeps the
plain reading.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtjax import ops

Domain = Literal['source', 'target']
SIMILARITIES = ('cosine', 'centered_cosine')
ASSIGNMENTS = ('batch', 'nearest')


def similarity(items: jax.Array, stats: jax.Array, center: jax.Array | None) -> jax.Array:
  """cos(items_j - center, stats_b - center): [N, C], [B, C] -> [N, B] (no centre: plain cosine)."""
  if center is not None:
    items, stats = items - center, stats - center
  return ops.cosine_matrix(items, stats)


def similarity_weights(items: jax.Array, stats: jax.Array, tau: float,
                       center: jax.Array | None = None) -> jax.Array:
  """s[j, b] = softmax_b(sim(items_j, stats_b) / tau): [N, C], [B, C] -> [N, B]."""
  return jax.nn.softmax(similarity(items, stats, center) / tau, axis=1)


def ema_update(items: jax.Array, stats: jax.Array, momentum: float, tau: float,
               center: jax.Array | None = None, owner: jax.Array | None = None) -> jax.Array:
  """items_j <- momentum * items_j + (1 - momentum) * sum_b s[j, b] stats_b.

  owner: None (the paper: s is the softmax of sim / tau over the whole batch)
  or [B] the item each image belongs to; then s[j] is that softmax over the
  images item j owns only, and an item that owns no image keeps its value.
  """
  if owner is None:
    return momentum * items + (1.0 - momentum) * similarity_weights(items, stats, tau, center) @ stats
  logits = similarity(items, stats, center) / tau
  owned = owner[None, :] == jnp.arange(items.shape[0])[:, None]  # [N, B]
  weights = jax.nn.softmax(jnp.where(owned, logits, -jnp.inf), axis=1, where=owned)
  weights = jnp.where(owned, weights, 0.0)
  has = jnp.any(owned, axis=1, keepdims=True)
  return jnp.where(has, momentum * items + (1.0 - momentum) * weights @ stats, items)


def orthogonality_loss(means: jax.Array, stds: jax.Array, center_mean: jax.Array | None = None,
                       center_std: jax.Array | None = None) -> jax.Array:
  """L_orth = (sum_ij h_M[i, j] + sum_ij h_E[i, j]) / (2 N^2), h = |sim| - I."""
  n = means.shape[0]
  eye = jnp.eye(n, dtype=means.dtype)
  h_m = jnp.abs(similarity(means, means, center_mean)) - eye
  h_e = jnp.abs(similarity(stds, stds, center_std)) - eye
  return (jnp.sum(h_m) + jnp.sum(h_e)) / (2.0 * n * n)


def item_scores(means, stds, mu, std, center_mean=None, center_std=None) -> jax.Array:
  """[B, N] similarity of each image to each item: sim of the means plus sim of the stds."""
  return (similarity(mu, means, center_mean) + similarity(std, stds, center_std))


def select_items(means: jax.Array, stds: jax.Array, mu: jax.Array, std: jax.Array,
                 domain: Domain, center_mean: jax.Array | None = None,
                 center_std: jax.Array | None = None) -> jax.Array:
  """Index [B] of the memory item used for each image.

  An item is a (mean, std) pair, so its similarity to an image is the sum of
  the similarity of the means and that of the stds. Source: least similar;
  target: most similar.
  """
  score = item_scores(means, stds, mu, std, center_mean, center_std)
  if domain == 'source':
    return jnp.argmin(score, axis=1)
  if domain == 'target':
    return jnp.argmax(score, axis=1)
  raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")


def farthest_points(points: jax.Array, n: int) -> jax.Array:
  """Indices [n] of a deterministic farthest-point sample of points [B, D] (first: farthest from the mean).

  With fewer points than n the picks repeat (a point at distance 0 is picked again).
  """
  d0 = jnp.sum(jnp.square(points - jnp.mean(points, axis=0)), axis=1)
  first = jnp.argmax(d0)

  def body(i, carry):
    picks, dist = carry
    nxt = jnp.argmax(dist)
    picks = picks.at[i].set(nxt)
    return picks, jnp.minimum(dist, jnp.sum(jnp.square(points - points[nxt]), axis=1))

  picks = jnp.zeros((n,), jnp.int32).at[0].set(first)
  dist = jnp.sum(jnp.square(points - points[first]), axis=1)
  picks, _ = jax.lax.fori_loop(1, n, body, (picks, dist))
  return picks


def reseed(means, stds, usage, mu, std, scores, threshold: float):
  """Moves items whose usage fell below `threshold` onto the batch's least represented images.

  scores: [B, N] image-item similarities (item_scores). The images are ranked
  by their best score, lowest first; the i-th dead item (in index order) takes
  the statistics of the i-th image in that ranking and a usage of 1/N (a grace
  period). Deterministic, so every device makes the same choice.
  """
  n = means.shape[0]
  dead = usage < threshold
  order = jnp.argsort(jnp.max(scores, axis=1))  # least represented first
  pick = order[(jnp.cumsum(dead) - 1) % order.shape[0]]
  means = jnp.where(dead[:, None], mu[pick], means)
  stds = jnp.where(dead[:, None], std[pick], stds)
  usage = jnp.where(dead, 1.0 / n, usage)
  return means, stds, usage


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


def memory_update(bank: dict, mu: jax.Array, std: jax.Array, *, momentum: float, tau: float,
                  centered: bool, reseed_threshold: float, assignment: str = 'batch') -> dict:
  """One training update of the bank from the (global) batch statistics mu, std [B, C].

  1. First update only: the centre is the batch average and the items are a
     farthest-point sample of the batch's images (a data-driven start; random
     items far from every image would all be pulled to the same images).
     Later updates: centre <- momentum centre + (1 - momentum) batch average.
  2. The EMA step of every item (FACTS.md 1) with similarities measured from
     the centre; with assignment 'nearest' each image counts only for the
     item it is most similar to (competitive, as k-means / EMA codebooks).
  3. usage <- momentum usage + (1 - momentum) share of images whose most
     similar item is j; items below `reseed_threshold` are re-seeded (`reseed`).
  Pure: returns the new bank, same keys.
  """
  n = bank['means'].shape[0]
  first = bank['initialized'] < 0.5
  cm_batch, cs_batch = jnp.mean(mu, axis=0), jnp.mean(std, axis=0)
  c_mean = jnp.where(first, cm_batch, momentum * bank['center_mean'] + (1 - momentum) * cm_batch)
  c_std = jnp.where(first, cs_batch, momentum * bank['center_std'] + (1 - momentum) * cs_batch)
  pm, ps = (c_mean, c_std) if centered else (None, None)
  norm = lambda x, c: x if c is None else x - c  # noqa: E731

  def seed(_):
    picks = farthest_points(jnp.concatenate([ops.l2_normalize(norm(mu, pm)),
                                             ops.l2_normalize(norm(std, ps))], axis=1), n)
    return mu[picks], std[picks], jnp.full((n,), 1.0 / n, mu.dtype)

  means, stds, usage = jax.lax.cond(first, seed, lambda _: (bank['means'], bank['stds'], bank['usage']),
                                    None)

  owner = None
  if assignment == 'nearest':
    owner = jnp.argmax(item_scores(means, stds, mu, std, pm, ps), axis=1)
  means = ema_update(means, mu, momentum, tau, pm, owner)
  stds = ema_update(stds, std, momentum, tau, ps, owner)
  scores = item_scores(means, stds, mu, std, pm, ps)
  nearest = jax.nn.one_hot(jnp.argmax(scores, axis=1), n, dtype=mu.dtype)
  usage = momentum * usage + (1 - momentum) * jnp.mean(nearest, axis=0)
  if reseed_threshold > 0:
    means, stds, usage = reseed(means, stds, usage, mu, std, scores, reseed_threshold)
  return {'means': means, 'stds': stds, 'center_mean': c_mean, 'center_std': c_std,
          'usage': usage, 'initialized': jnp.ones_like(bank['initialized'])}


def diversity(items: jax.Array) -> jax.Array:
  """Mean pairwise distance of the items [N, C] over their mean norm (0: all items equal)."""
  n = items.shape[0]
  d = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(items[:, None] - items[None]), axis=-1), 0.0))
  mean_d = jnp.sum(d) / max(n * (n - 1), 1)
  return mean_d / jnp.maximum(jnp.mean(jnp.linalg.norm(items, axis=1)), 1e-12)


def distinct_count(item: jax.Array, n: int) -> jax.Array:
  """How many different items the indices `item` [B] name."""
  return jnp.sum(jnp.max(jax.nn.one_hot(item, n), axis=0))


def _init_means(key, shape):
  return jax.random.normal(key, shape, jnp.float32)


def _init_stds(key, shape):
  return jnp.abs(jax.random.normal(key, shape, jnp.float32)) + 0.1


class StyleMemory(nn.Module):
  """The style memory: EMA bank of N (mean, std) source styles.

  Attributes:
    num_items: N, the number of stored styles.
    momentum: lambda of the EMA update (items, centre and usage).
    alpha: weight of the image's own statistics in the mix (1 = identity).
    tau: temperature of the softmax over the batch in the similarity weights.
    eps: added to the variance in the channel statistics.
    similarity: 'centered_cosine' (cosines measured from the running source
      average) or 'cosine' (the plain cosine of the raw statistics).
    assignment: 'batch' (the paper: every image of the batch updates every
      item, weighted by the softmax over the batch) or 'nearest' (an image
      updates only the item it is most similar to).
    reseed_threshold: an item whose usage (running share of source images it
      is nearest to) falls below this is moved onto a poorly represented image
      of the batch; 0 turns re-seeding off.
    axis_name: the pmap axis; when set, the statistics of every device are
      gathered before the EMA step so every replica applies the same update,
      equal to the single-device update on the global batch.
  """

  num_items: int = 8
  momentum: float = 0.9
  alpha: float = 0.5
  tau: float = 0.1
  eps: float = 1e-5
  similarity: str = 'centered_cosine'
  reseed_threshold: float = 0.0
  assignment: str = 'batch'
  axis_name: str | None = None

  @nn.compact
  def __call__(self, feats: jax.Array, *, domain: Domain, train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Re-styles feats [B, H, W, C]; returns (features, aux).

    aux holds 'orth_loss' (a scalar), 'item' ([B] the chosen item indices),
    'nearest' ([B] each image's most similar item) and 'diversity' (scalar,
    see `diversity`, of the means). In training on the source domain the bank
    takes one update first; the orthogonality loss is taken on the updated
    bank, whose gradient reaches the features through the batch statistics
    only (the stored bank is stop-gradient).
    """
    if self.similarity not in SIMILARITIES:
      raise ValueError(f'memory.similarity must be one of {SIMILARITIES}, got {self.similarity!r}')
    if self.assignment not in ASSIGNMENTS:
      raise ValueError(f'memory.assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}')
    c = feats.shape[-1]
    shape = (self.num_items, c)
    var = {
        'means': self.variable('memory', 'means', lambda: _init_means(self.make_rng('params'), shape)),
        'stds': self.variable('memory', 'stds', lambda: _init_stds(self.make_rng('params'), shape)),
        'center_mean': self.variable('memory', 'center_mean', jnp.zeros, (c,), jnp.float32),
        'center_std': self.variable('memory', 'center_std', jnp.zeros, (c,), jnp.float32),
        'usage': self.variable('memory', 'usage', jnp.zeros, (self.num_items,), jnp.float32),
        'initialized': self.variable('memory', 'initialized', jnp.zeros, (), jnp.float32),
    }
    feats32 = feats.astype(jnp.float32)
    mu, std = ops.channel_stats(feats32, self.eps)
    bank = {k: jax.lax.stop_gradient(v.value) for k, v in var.items()}
    if train and domain == 'source' and not self.is_initializing():
      mu_all, std_all = mu, std
      if self.axis_name is not None:
        mu_all = jax.lax.all_gather(mu, self.axis_name, tiled=True)
        std_all = jax.lax.all_gather(std, self.axis_name, tiled=True)
      # The orthogonality loss sees the update's dependence on the batch
      # statistics; the stored bank itself never takes a gradient.
      updated = memory_update(bank, mu_all, std_all, momentum=self.momentum, tau=self.tau,
                              centered=self.similarity == 'centered_cosine',
                              reseed_threshold=self.reseed_threshold, assignment=self.assignment)
      for k, v in var.items():
        v.value = jax.lax.stop_gradient(updated[k])
      bank_grad = updated
    else:
      bank_grad = bank
    fixed = {k: jax.lax.stop_gradient(v) for k, v in bank_grad.items()}
    cm, cs = ((fixed['center_mean'], fixed['center_std']) if self.similarity == 'centered_cosine'
              else (None, None))
    orth = orthogonality_loss(bank_grad['means'], bank_grad['stds'], cm, cs)
    item = select_items(fixed['means'], fixed['stds'], mu, std, domain, cm, cs)
    nearest = select_items(fixed['means'], fixed['stds'], mu, std, 'target', cm, cs)
    out = restyle(feats32, mu, std, fixed['means'][item], fixed['stds'][item], self.alpha)
    return out.astype(feats.dtype), {'orth_loss': orth, 'item': item, 'nearest': nearest,
                                     'diversity': diversity(fixed['means'])}
