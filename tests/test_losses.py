"""Losses against float64 numpy references."""

import jax.numpy as jnp
import numpy as np

from mmtjax import losses


def _cos(a, b):
  return (a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))


def test_contrastive_loss_matches_numpy():
  rng = np.random.default_rng(0)
  pb, pt = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
  bb, bt = _cos(pb, pb), _cos(pb, pt)
  total = 0.0
  for i in range(5):
    pos = np.exp(bt[i, i])
    neg = sum(np.exp(bb[i, j]) + np.exp(bt[i, j]) for j in range(5) if j != i)
    total += -np.log(pos / (pos + neg))
  out = losses.contrastive_loss(jnp.asarray(pb, jnp.float32), jnp.asarray(pt, jnp.float32))
  np.testing.assert_allclose(out, total / 10, rtol=1e-5)


def test_pixel_cross_entropy_ignores_255():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 4, 4, 2))
  labels = rng.integers(0, 2, size=(2, 4, 4)).astype(np.uint8)
  labels[0, :2] = 255
  labels[1, 0, 0] = 255
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  per = []
  for b in range(2):
    valid = labels[b] != 255
    nll = -np.take_along_axis(logp[b], np.where(valid, labels[b], 0)[..., None].astype(int), -1)[..., 0]
    per.append(nll[valid].mean())
  out = losses.pixel_cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(out, np.mean(per), rtol=1e-5)


def test_pixel_cross_entropy_all_ignored_is_finite():
  out = losses.pixel_cross_entropy(jnp.zeros((1, 2, 2, 2)), jnp.full((1, 4, 4), 255, jnp.uint8))
  assert float(out) == 0.0


def test_single_episode_contrast_is_zero():
  out = losses.contrastive_loss(jnp.ones((1, 3)), jnp.ones((1, 3)) * 2)
  np.testing.assert_allclose(out, 0.0, atol=1e-7)
