"""The style memory against independent float64 numpy references."""

import jax
import jax.numpy as jnp
import numpy as np

from mmtjax.models import style_memory as sm


def _cos(a, b):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  return a @ b.T


def _np_ema(items, stats, lam, tau):
  s = np.exp(_cos(items, stats) / tau)
  s = s / s.sum(axis=1, keepdims=True)  # normalised over the batch b
  out = items.copy()
  for j in range(items.shape[0]):
    out[j] = lam * items[j] + (1 - lam) * sum(s[j, b] * stats[b] for b in range(stats.shape[0]))
  return out


def _stats(x, eps):
  mu = x.mean(axis=(1, 2))
  return mu, np.sqrt(((x - mu[:, None, None]) ** 2).mean(axis=(1, 2)) + eps)


def test_ema_update_matches_numpy_for_means_and_stds():
  rng = np.random.default_rng(0)
  means, stds = rng.normal(size=(5, 8)), np.abs(rng.normal(size=(5, 8)))
  mu, std = rng.normal(size=(6, 8)), np.abs(rng.normal(size=(6, 8)))
  for items, stats in ((means, mu), (stds, std)):
    out = sm.ema_update(jnp.asarray(items, jnp.float32), jnp.asarray(stats, jnp.float32), 0.9, 0.1)
    np.testing.assert_allclose(out, _np_ema(items, stats, 0.9, 0.1), rtol=1e-4, atol=1e-5)


def test_orthogonality_loss_matches_numpy():
  rng = np.random.default_rng(1)
  m, e = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  n = 4
  ref = (np.sum(np.abs(_cos(m, m)) - np.eye(n)) + np.sum(np.abs(_cos(e, e)) - np.eye(n))) / (2 * n * n)
  np.testing.assert_allclose(sm.orthogonality_loss(jnp.asarray(m), jnp.asarray(e)), ref, rtol=1e-5)


def _np_enhance(x, means, stds, alpha, eps, most_similar):
  mu, v = _stats(x, eps)
  out = np.empty_like(x)
  for b in range(x.shape[0]):
    score = _cos(mu[b:b + 1], means)[0] + _cos(v[b:b + 1], stds)[0]
    k = np.argmax(score) if most_similar else np.argmin(score)
    mu_mix = alpha * mu[b] + (1 - alpha) * means[k]
    v_mix = alpha * v[b] + (1 - alpha) * stds[k]
    out[b] = (x[b] - mu[b]) / v[b] * v_mix + mu_mix
  return out


def _apply(memory, x, domain, train, alpha=0.5, momentum=0.9, tau=0.1):
  module = sm.StyleMemory(num_items=memory['means'].shape[0], momentum=momentum, alpha=alpha,
                          tau=tau, eps=1e-5)
  return module.apply({'memory': memory}, x, domain=domain, train=train, mutable=['memory'])


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, 4, 4, 6)) * rng.uniform(0.5, 2, size=(3, 1, 1, 6)) + rng.normal(size=(3, 1, 1, 6))
  means, stds = rng.normal(size=(5, 6)), np.abs(rng.normal(size=(5, 6))) + 0.1
  memory = {'means': jnp.asarray(means, jnp.float32), 'stds': jnp.asarray(stds, jnp.float32)}
  return x, means, stds, memory


def test_target_uses_most_similar_item_and_never_updates():
  x, means, stds, memory = _setup()
  (out, aux), new = _apply(memory, jnp.asarray(x, jnp.float32), 'target', train=False)
  np.testing.assert_allclose(out, _np_enhance(x, means, stds, 0.5, 1e-5, True), rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(new['memory']['means'], memory['means'])
  np.testing.assert_array_equal(new['memory']['stds'], memory['stds'])


def test_source_training_updates_by_ema_then_uses_least_similar_item():
  x, means, stds, memory = _setup(1)
  (out, _), new = _apply(memory, jnp.asarray(x, jnp.float32), 'source', train=True)
  mu, v = _stats(x, 1e-5)
  ref_m, ref_e = _np_ema(means, mu, 0.9, 0.1), _np_ema(stds, v, 0.9, 0.1)
  np.testing.assert_allclose(new['memory']['means'], ref_m, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(new['memory']['stds'], ref_e, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out, _np_enhance(x, ref_m, ref_e, 0.5, 1e-5, False), rtol=1e-4, atol=1e-4)


def test_alpha_one_is_identity():
  x, _, _, memory = _setup(2)
  for domain in ('source', 'target'):
    (out, _), _ = _apply(memory, jnp.asarray(x, jnp.float32), domain, train=False, alpha=1.0)
    np.testing.assert_allclose(out, x, rtol=1e-4, atol=1e-4)


def test_init_does_not_update_and_eval_keeps_memory():
  x = jnp.asarray(_setup(3)[0], jnp.float32)
  module = sm.StyleMemory(num_items=4)
  variables = module.init(jax.random.key(0), x, domain='source', train=True)
  assert set(variables) == {'memory'}
  again = module.init(jax.random.key(0), x[:1], domain='source', train=True)
  np.testing.assert_array_equal(variables['memory']['means'], again['memory']['means'])
  _, new = module.apply(variables, x, domain='source', train=False, mutable=['memory'])
  np.testing.assert_array_equal(new['memory']['means'], variables['memory']['means'])


def test_loss_gradient_with_respect_to_memory_is_zero():
  x, _, _, memory = _setup(4)
  module = sm.StyleMemory(num_items=5)

  def loss(mem):
    (out, aux), _ = module.apply({'memory': mem}, jnp.asarray(x, jnp.float32), domain='source',
                                 train=True, mutable=['memory'])
    return jnp.sum(out ** 2) + aux['orth_loss']

  grads = jax.grad(loss)(memory)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))
