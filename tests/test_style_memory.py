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


# The paper's plain reading: cosine of the raw statistics, every image updates
# every item, no re-seeding. (The default reading is tested further below.)
PLAIN = dict(similarity='cosine', assignment='batch', reseed_threshold=0.0)


def _apply(memory, x, domain, train, alpha=0.5, momentum=0.9, tau=0.1, **kw):
  module = sm.StyleMemory(num_items=memory['means'].shape[0], momentum=momentum, alpha=alpha,
                          tau=tau, eps=1e-5, **(kw or PLAIN))
  return module.apply({'memory': memory}, x, domain=domain, train=train, mutable=['memory'])


def _bank(means, stds, initialized=1.0):
  n, c = means.shape
  return {'means': jnp.asarray(means, jnp.float32), 'stds': jnp.asarray(stds, jnp.float32),
          'center_mean': jnp.zeros((c,), jnp.float32), 'center_std': jnp.zeros((c,), jnp.float32),
          'usage': jnp.full((n,), 1.0 / n, jnp.float32), 'initialized': jnp.asarray(initialized, jnp.float32)}


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, 4, 4, 6)) * rng.uniform(0.5, 2, size=(3, 1, 1, 6)) + rng.normal(size=(3, 1, 1, 6))
  means, stds = rng.normal(size=(5, 6)), np.abs(rng.normal(size=(5, 6))) + 0.1
  return x, means, stds, _bank(means, stds)


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
  module = sm.StyleMemory(num_items=5, reseed_threshold=0.5)

  def loss(mem):
    (out, aux), _ = module.apply({'memory': mem}, jnp.asarray(x, jnp.float32), domain='source',
                                 train=True, mutable=['memory'])
    return jnp.sum(out ** 2) + aux['orth_loss']

  grads = jax.grad(loss)(memory)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


# ---------------------------------------------------------------------------
# The default reading: centred cosine, nearest-item assignment, re-seeding.


def _np_center_cos(a, b, c):
  return _cos(a - c, b - c)


def _np_farthest(points, n):
  picks = [int(np.argmax(((points - points.mean(0)) ** 2).sum(1)))]
  dist = ((points - points[picks[0]]) ** 2).sum(1)
  for _ in range(1, n):
    picks.append(int(np.argmax(dist)))
    dist = np.minimum(dist, ((points - points[picks[-1]]) ** 2).sum(1))
  return picks


def _np_update(bank, mu, std, lam, tau, threshold):
  """Float64 numpy reference of style_memory.memory_update (centred, nearest assignment)."""
  means, stds = bank['means'].astype(np.float64), bank['stds'].astype(np.float64)
  usage = bank['usage'].astype(np.float64)
  n = means.shape[0]
  if bank['initialized'] < 0.5:
    cm, cs = mu.mean(0), std.mean(0)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    picks = _np_farthest(np.concatenate([unit(mu - cm), unit(std - cs)], 1), n)
    means, stds, usage = mu[picks].copy(), std[picks].copy(), np.full(n, 1.0 / n)
  else:
    cm = lam * bank['center_mean'] + (1 - lam) * mu.mean(0)
    cs = lam * bank['center_std'] + (1 - lam) * std.mean(0)
  owner = np.argmax(_np_center_cos(mu, means, cm) + _np_center_cos(std, stds, cs), axis=1)
  new = []
  for items, stats, c in ((means, mu, cm), (stds, std, cs)):
    out = items.copy()
    for j in range(n):
      mine = np.flatnonzero(owner == j)
      if mine.size:
        w = np.exp(_np_center_cos(items[j:j + 1], stats[mine], c)[0] / tau)
        out[j] = lam * items[j] + (1 - lam) * (w / w.sum()) @ stats[mine]
    new.append(out)
  means, stds = new
  scores = _np_center_cos(mu, means, cm) + _np_center_cos(std, stds, cs)
  usage = lam * usage + (1 - lam) * np.bincount(scores.argmax(1), minlength=n) / mu.shape[0]
  order = np.argsort(scores.max(1), kind='stable')
  k = 0
  for j in range(n):
    if usage[j] < threshold:
      means[j], stds[j], usage[j] = mu[order[k % len(order)]], std[order[k % len(order)]], 1.0 / n
      k += 1
  return {'means': means, 'stds': stds, 'center_mean': cm, 'center_std': cs, 'usage': usage}


def _check_update(bank, mu, std, lam=0.8, tau=0.1, threshold=0.15):
  got = sm.memory_update({k: jnp.asarray(v, jnp.float32) for k, v in bank.items()},
                         jnp.asarray(mu, jnp.float32), jnp.asarray(std, jnp.float32), momentum=lam,
                         tau=tau, centered=True, reseed_threshold=threshold, assignment='nearest')
  ref = _np_update(bank, mu, std, lam, tau, threshold)
  for k, v in ref.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
  assert float(got['initialized']) == 1.0
  return ref


def test_default_update_matches_numpy_first_and_later_steps():
  rng = np.random.default_rng(5)
  n, c, b = 4, 6, 10
  bank = {'means': rng.normal(size=(n, c)), 'stds': rng.uniform(0.2, 1, (n, c)),
          'center_mean': np.zeros(c), 'center_std': np.zeros(c), 'usage': np.zeros(n), 'initialized': 0.0}
  mu, std = rng.normal(size=(b, c)) + 2, rng.uniform(0.2, 1, (b, c))
  ref = _check_update(bank, mu, std)  # first step: centre = batch mean, items seeded from the batch
  bank = {**ref, 'usage': np.array([0.3, 0.01, 0.4, 0.2]), 'initialized': 1.0}  # item 1 is nearly unused
  mu, std = rng.normal(size=(b, c)) + 2, rng.uniform(0.2, 1, (b, c))
  _check_update(bank, mu, std)


def _cluster_stream(steps, k=4, c=16, batch=16, seed=0):
  """Batches of positive (post-ReLU-like) channel statistics from k well-separated styles."""
  rng = np.random.default_rng(seed)
  centres_m = 2.0 + rng.uniform(0, 1.5, (k, c))
  centres_s = 0.5 + rng.uniform(0, 0.8, (k, c))
  for _ in range(steps):
    which = rng.integers(k, size=batch)
    yield (centres_m[which] + 0.05 * rng.normal(size=(batch, c)),
           centres_s[which] + 0.02 * rng.normal(size=(batch, c))), (centres_m, centres_s)


def _run_stream(k, **memory):
  module = sm.StyleMemory(num_items=k, momentum=0.9, tau=0.1, **memory)
  feats = jnp.zeros((16, 2, 2, 16))
  variables = module.init(jax.random.key(0), feats, domain='source', train=True)
  update = jax.jit(lambda bank, mu, std: sm.memory_update(
      bank, mu, std, momentum=0.9, tau=0.1, centered=module.similarity == 'centered_cosine',
      reseed_threshold=module.reseed_threshold, assignment=module.assignment))
  bank = variables['memory']
  stream = list(_cluster_stream(300, k))
  for (mu, std), _ in stream:
    bank = update(bank, jnp.asarray(mu, jnp.float32), jnp.asarray(std, jnp.float32))
  return bank, stream[0][1]


def test_bank_holds_one_item_per_style_cluster():
  k = 4
  bank, (centres_m, centres_s) = _run_stream(k, similarity='centered_cosine', assignment='nearest',
                                             reseed_threshold=0.02)
  means = np.asarray(bank['means'])
  d = np.linalg.norm(means[:, None] - centres_m[None], axis=-1)  # [items, clusters]
  spread = np.linalg.norm(centres_m - centres_m.mean(0), axis=1).min()
  # Every cluster centre has its own item close to it, and no item sits at the global mean.
  assert sorted(d.argmin(axis=1)) == list(range(k))
  assert d.min(axis=0).max() < 0.1 * spread
  assert np.linalg.norm(means - centres_m.mean(0), axis=1).min() > 0.5 * spread
  np.testing.assert_allclose(np.asarray(bank['stds'])[np.argsort(d.argmin(axis=1))], centres_s, atol=0.05)
  assert float(sm.diversity(bank['means'])) > 0.1


def test_plain_cosine_batch_update_collapses_to_the_mean():
  # The reason for the default: with the paper's plain cosine of positive
  # statistics every item is pulled to the batch average.
  bank, (centres_m, _) = _run_stream(4, similarity='cosine', assignment='batch', reseed_threshold=0.0)
  means = np.asarray(bank['means'])
  assert float(sm.diversity(bank['means'])) < 0.01
  np.testing.assert_allclose(means, np.broadcast_to(centres_m.mean(0), means.shape), rtol=0.1)
