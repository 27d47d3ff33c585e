"""ops against float64 numpy references."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax import ops


def test_channel_stats_matches_numpy():
  x = np.random.default_rng(0).normal(size=(3, 5, 4, 6))
  mean, std = ops.channel_stats(jnp.asarray(x, jnp.float32), eps=1e-5)
  ref_mean = x.mean(axis=(1, 2))
  ref_std = np.sqrt(((x - ref_mean[:, None, None]) ** 2).mean(axis=(1, 2)) + 1e-5)
  np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(std, ref_std, rtol=1e-5)


def test_masked_average_pool_matches_numpy_and_empty_mask_is_zero():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(3, 4, 5, 7))
  m = rng.uniform(size=(3, 4, 5)) * (rng.uniform(size=(3, 4, 5)) > 0.5)
  m[2] = 0.0
  out = np.asarray(ops.masked_average_pool(jnp.asarray(f, jnp.float32), jnp.asarray(m, jnp.float32)))
  for b in range(2):
    ref = (f[b] * m[b][..., None]).sum(axis=(0, 1)) / m[b].sum()
    np.testing.assert_allclose(out[b], ref, rtol=1e-5, atol=1e-6)
  assert np.all(out[2] == 0.0) and np.all(np.isfinite(out))


def test_masked_average_pool_rejects_mismatched_mask():
  with pytest.raises(ValueError, match='does not match'):
    ops.masked_average_pool(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 8, 8)))


def test_cosine_map_matches_numpy():
  rng = np.random.default_rng(2)
  f, p = rng.normal(size=(2, 3, 3, 5)), rng.normal(size=(2, 2, 5))
  out = ops.cosine_map(jnp.asarray(f, jnp.float32), jnp.asarray(p, jnp.float32), scale=20.0)
  fn = f / np.linalg.norm(f, axis=-1, keepdims=True)
  pn = p / np.linalg.norm(p, axis=-1, keepdims=True)
  np.testing.assert_allclose(out, 20 * np.einsum('bhwc,bpc->bhwp', fn, pn), rtol=1e-4, atol=1e-5)
