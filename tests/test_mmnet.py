"""MM-Net against independent numpy references: meta-class memory, prior, FEM, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax import methods, ops
from mmtjax.models import get_model, meta_class, mmnet
from tests.conftest import tiny_config

RNG = np.random.default_rng(0)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def np_propagate(a_q, a_s, mask):
  """One episode: a_q [Pq, N], a_s [Ps, N], mask [Ps] -> (propagated [Pq, N], weight logit [Pq])."""
  pq, ps = a_q.shape[0], a_s.shape[0]
  sim = np.zeros((pq, ps))
  for i in range(pq):
    for j in range(ps):
      cos = a_q[i] @ a_s[j] / (np.linalg.norm(a_q[i]) * np.linalg.norm(a_s[j]) + 1e-7)
      sim[i, j] = cos * mask[j]
  sim[sim == 0] = -1e9
  return _softmax(sim, 1) @ _sigmoid(a_s), _sigmoid(sim).sum(1)


def np_recon_loss(m, f):
  """m [D, N], f [P, D] -> cross-entropy identifying each original pixel j among reconstructed i."""
  r = _softmax(f @ m, 1) @ m.T  # [P, D]: pixel i rebuilt from the meta-classes
  g = r @ f.T  # g[i, j]
  total = 0.0
  for j in range(f.shape[0]):
    col = g[:, j]
    total += -(col[j] - np.log(np.sum(np.exp(col - col.max()))) - col.max())
  return total / f.shape[0]


def test_activation_maps():
  m, f = RNG.normal(size=(6, 4)), RNG.normal(size=(2, 5, 6))
  got = meta_class.activation_maps(jnp.asarray(m, jnp.float32), jnp.asarray(f, jnp.float32))
  want = np.stack([[[f[b, p] @ m[:, n] for n in range(4)] for p in range(5)] for b in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reconstruction_loss_on_a_tiny_memory():
  m, f = RNG.normal(size=(3, 2)) * 0.5, RNG.normal(size=(2, 4, 3)) * 0.5
  got = meta_class.reconstruction_loss(jnp.asarray(m, jnp.float32), jnp.asarray(f, jnp.float32))
  want = np.mean([np_recon_loss(m, f[b]) for b in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_blocked_reconstruction_loss_equals_the_official_form_with_its_gradients():
  # D = 6 > N = 3 (the rank-N form is the cheaper one), P = 10 pixels in blocks of 4 (the last padded).
  m, f = RNG.normal(size=(6, 3)) * 0.5, RNG.normal(size=(2, 10, 6)) * 0.5
  want = np.mean([np_recon_loss(m, f[b]) for b in range(2)])
  args = (jnp.asarray(m, jnp.float32), jnp.asarray(f, jnp.float32))
  grads = {}
  for block in (0, 4, 1):
    loss, grads[block] = jax.value_and_grad(meta_class.reconstruction_loss, argnums=(0, 1))(*args, block)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
  # The gradient of the official form (R = M softmax(A), G = R F^T), by autodiff.
  def official(m, f):
    g = jnp.einsum('bid,bjd->bij', jnp.einsum('bin,dn->bid', jax.nn.softmax(f @ m, axis=-1), m), f)
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(g, axis=1), axis1=1, axis2=2))
  reference = jax.grad(official, argnums=(0, 1))(*args)
  for block in grads:
    for got, ref in zip(grads[block], reference):
      np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_propagation_with_exact_zeros_in_the_mask():
  a_q, a_s = RNG.normal(size=(1, 5, 4)), RNG.normal(size=(1, 6, 4))
  mask = np.array([[1.0, 0.0, 0.5, 0.0, 1.0, 0.25]])
  prop, logit = meta_class.propagate(*(jnp.asarray(x, jnp.float32) for x in (a_q, a_s, mask)))
  want_prop, want_logit = np_propagate(a_q[0], a_s[0], mask[0])
  np.testing.assert_allclose(prop[0], want_prop, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logit[0], want_logit, rtol=1e-5, atol=1e-6)
  # Masked support pixels carry no weight: the map only mixes pixels 0, 2, 4, 5.
  sim = want_logit  # sum of sigmoids over the 4 unmasked pixels, each < 1
  assert np.all(sim < 4.0)


def test_quality_weights_sum_to_one_and_are_one_for_a_single_shot():
  w = meta_class.quality_weights(jnp.asarray(RNG.normal(size=(2, 5, 7)), jnp.float32))
  np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
  one = meta_class.quality_weights(jnp.asarray(RNG.normal(size=(2, 1, 7)), jnp.float32))
  np.testing.assert_array_equal(one, 1.0)


def np_meta_class_maps(m, q, s, masks):
  """q [P, D], s [K, P, D], masks [K, P] -> (Z [P, N], weights [K, P]), each shot with its own mask."""
  a_q = q @ m
  props, logits = zip(*(np_propagate(a_q, s[k] @ m, masks[k]) for k in range(s.shape[0])))
  w = _softmax(np.stack(logits), 0)
  return _sigmoid(a_q) * np.einsum('kp,kpn->pn', w, np.stack(props)), w


def test_meta_class_memory_module_matches_numpy_per_shot_masks():
  b, k, h, w, d, n = 2, 3, 3, 3, 8, 5
  q = RNG.normal(size=(b, h, w, d))
  s = RNG.normal(size=(b, k, h, w, d))
  masks = (RNG.random((b, k, h, w)) < 0.5).astype(np.float64)
  masks[:, :, 0, 0] = 1.0  # No shot is empty here.
  module = meta_class.MetaClassMemory(dim=d, num_items=n, init_std=0.3)
  params = module.init(jax.random.PRNGKey(0), jnp.zeros((b, h, w, d)), jnp.zeros((b, k, h, w, d)),
                       jnp.ones((b, k, h, w)))
  z, aux = module.apply(params, *(jnp.asarray(x, jnp.float32) for x in (q, s, masks)))
  m = np.asarray(params['params']['memory'], np.float64)
  for e in range(b):
    want_z, want_w = np_meta_class_maps(m, q[e].reshape(-1, d), s[e].reshape(k, -1, d),
                                        masks[e].reshape(k, -1))
    np.testing.assert_allclose(z[e].reshape(-1, n), want_z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(aux['shot_weights'][e].reshape(k, -1), want_w, rtol=1e-4, atol=1e-5)
  # Reconstruction over every shot and the query, not shot 0 only.
  images = np.concatenate([s.reshape(b * k, h * w, d), q.reshape(b, h * w, d)])
  want = np.mean([np_recon_loss(m, x) for x in images])
  np.testing.assert_allclose(aux['recon_loss'], want, rtol=1e-4)


def np_prior(q, s, masks):
  """q [P, C], s [K, P, C], masks [K, P] -> [P]."""
  out = []
  for k in range(s.shape[0]):
    sk = s[k] * masks[k][:, None]
    sim = np.array([[sk[j] @ q[i] / (np.linalg.norm(sk[j]) * np.linalg.norm(q[i]) + 1e-7)
                     for i in range(q.shape[0])] for j in range(sk.shape[0])])
    best = sim.max(0)
    out.append((best - best.min()) / (best.max() - best.min() + 1e-7))
  return np.mean(out, 0)


def test_prior_mask_matches_numpy_and_is_finite_for_a_constant_map():
  b, k, h, w, c = 2, 2, 3, 4, 5
  q, s = RNG.random((b, h, w, c)), RNG.random((b, k, h, w, c))
  masks = (RNG.random((b, k, h, w)) < 0.6).astype(np.float64)
  got = mmnet.prior_mask(*(jnp.asarray(x, jnp.float32) for x in (q, s, masks)))
  for e in range(b):
    want = np_prior(q[e].reshape(-1, c), s[e].reshape(k, -1, c), masks[e].reshape(k, -1))
    np.testing.assert_allclose(got[e].reshape(-1), want, rtol=1e-4, atol=1e-5)
  # Identical features everywhere: every similarity is equal; min-max gives 0, not NaN.
  const = jnp.ones((1, h, w, c))
  flat = mmnet.prior_mask(const, jnp.ones((1, 1, h, w, c)), jnp.ones((1, 1, h, w)))
  assert np.all(np.isfinite(flat)) and np.allclose(flat, 0.0)
  # An empty support mask: all similarities are 0 -> finite.
  empty = mmnet.prior_mask(const, jnp.ones((1, 1, h, w, c)), jnp.zeros((1, 1, h, w)))
  assert np.all(np.isfinite(empty))


def test_resize_align_corners_matches_numpy():
  x = RNG.normal(size=(1, 4, 5, 2))
  got = ops.resize_align_corners(jnp.asarray(x, jnp.float32), (7, 3))

  def ref(img, oh, ow):
    ih, iw = img.shape[:2]
    out = np.zeros((oh, ow, img.shape[2]))
    for i in range(oh):
      for j in range(ow):
        y = i * (ih - 1) / (oh - 1) if oh > 1 else 0.0
        xx = j * (iw - 1) / (ow - 1) if ow > 1 else 0.0
        y0, x0 = int(np.floor(y)), int(np.floor(xx))
        y1, x1 = min(y0 + 1, ih - 1), min(x0 + 1, iw - 1)
        dy, dx = y - y0, xx - x0
        out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1] +
                     dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out

  np.testing.assert_allclose(got[0], ref(x[0], 7, 3), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ops.resize_align_corners(jnp.asarray(x, jnp.float32), (1, 1))[0, 0, 0],
                             x[0, 0, 0], rtol=1e-6)


def test_scaled_bins():
  assert mmnet.scaled_bins((60, 30, 15, 8), 60, 60) == (60, 30, 15, 8)
  assert mmnet.scaled_bins((60, 30, 15, 8), 60, 53) == (53, 26, 13, 7)
  assert mmnet.scaled_bins((60, 30, 15, 8), 60, 8) == (8, 4, 2, 1)


def _mmnet_config(shot=1, reduce_dim=16):
  config = tiny_config('', f'model=mmnet,shot={shot}')
  config.model.reduce_dim = reduce_dim
  config.model.num_meta_classes = 10
  return config


@pytest.mark.parametrize('size,feat', [(473, 60), (417, 53), (64, 8), (65, 9)])
def test_output_shapes_for_several_input_sizes(size, feat):
  model = get_model(_mmnet_config(shot=2))
  args = (jnp.zeros((1, 2, size, size, 3)), jnp.zeros((1, 2, size, size), jnp.uint8),
          jnp.zeros((1, size, size, 3)))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, train=False))
  out, _ = jax.eval_shape(lambda v: model.apply(v, *args, train=True, rngs={'dropout': jax.random.PRNGKey(1)},
                                                mutable=['batch_stats']), variables)
  assert out['logits'].shape == (1, size, size, 2)
  assert out['aux_logits'].shape == (4, 1, size, size, 2)
  assert out['shot_weights'].shape == (1, 2, feat, feat)
  assert out['recon_loss'].shape == ()


def _batch(b, k, s, empty_shot=None):
  rng = np.random.default_rng(1)
  labels = np.zeros((b, k, s, s), np.uint8)
  labels[:, :, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
  labels[:, :, 0, :] = 255
  if empty_shot is not None:
    labels[:, empty_shot] = np.where(labels[:, empty_shot] == 255, 255, 0)
  query = np.zeros((b, s, s), np.uint8)
  query[:, s // 3:, s // 3:] = 1
  return (jnp.asarray(rng.normal(size=(b, k, s, s, 3)), jnp.float32), jnp.asarray(labels),
          jnp.asarray(rng.normal(size=(b, s, s, 3)), jnp.float32), jnp.asarray(query))


def _check_training_step(config, model, variables, support, labels, query, query_labels):
  """A finite loss made of its three terms, finite gradients, a gradient on the memory."""
  def loss_fn(params):
    out, _ = model.apply({**variables, 'params': params}, support, labels, query, train=True,
                         rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
    return methods.for_config(config).loss(out, query_labels, dict(config.loss), None)

  (loss, terms), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables['params'])
  assert np.isfinite(loss) and set(terms) == {'main', 'aux', 'recon'}
  np.testing.assert_allclose(loss, terms['main'] + terms['aux'] + 0.1 * terms['recon'], rtol=1e-5)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.any(np.asarray(grads['meta']['memory']) != 0)


def test_an_all_background_shot_is_finite_and_down_weighted():
  """Also the training step's checks (loss terms, finite gradients reaching the meta-class memory),
  here at 3 shots with one all-background shot (1-shot MM-Net trains in test_vit.py and
  test_feature_cache.py; 5-shot shapes: test_the_paper_configuration_has_the_published_shapes)."""
  config = _mmnet_config(3)
  model = get_model(config)
  support, labels, query, query_labels = _batch(2, 3, 32, empty_shot=2)
  # init_with_output: the forward pass with the initial variables, compiled once (not init, then apply).
  out, variables = jax.jit(lambda *a: model.init_with_output(jax.random.PRNGKey(0), *a, train=False))(
      support, labels, query)
  assert np.all(np.isfinite(out['logits']))
  weights = np.asarray(out['shot_weights'])  # [B, K, h, w]
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
  others = np.delete(weights, 2, axis=1)
  assert np.all(weights[:, 2] <= others.min(axis=1) + 1e-7)
  assert weights[:, 2].mean() < others.mean()
  _check_training_step(config, model, variables, support, labels, query, query_labels)


def test_the_paper_configuration_has_the_published_shapes():
  from configs import mmnet_pascal
  config = mmnet_pascal.get_config('fold=0,shot=5')
  model = get_model(config)
  args = (jnp.zeros((1, 5, 473, 473, 3)), jnp.zeros((1, 5, 473, 473), jnp.uint8), jnp.zeros((1, 473, 473, 3)))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, train=False))
  assert variables['params']['meta']['memory'].shape == (256, 50)
  assert variables['params']['head']['init_merge_0']['Conv_0']['kernel'].shape == (1, 1, 51, 256)
  assert variables['params']['down_query']['Conv_0']['kernel'].shape == (1, 1, 1536, 256)
  out, _ = jax.eval_shape(lambda v: model.apply(v, *args, train=True, rngs={'dropout': jax.random.PRNGKey(1)},
                                                mutable=['batch_stats']), variables)
  assert out['logits'].shape == (1, 473, 473, 2) and out['shot_weights'].shape == (1, 5, 60, 60)
  assert out['aux_logits'].shape == (4, 1, 473, 473, 2)


def test_one_backbone_batch_gives_the_per_shot_batches_features_where_batchnorm_is_per_image():
  config = _mmnet_config(2)
  config.model.prior_stage = 'layer4'  # the prior's layer4 pass is batched too
  config.model.backbone_bn = 'running'
  config.model.bins = (2, 1)
  support, labels, query, _ = _batch(2, 2, 16)
  config.model.joint_backbone = True
  joint = get_model(config)
  config.model.joint_backbone = False
  separate = get_model(config)
  variables = jax.jit(lambda *a: joint.init(jax.random.PRNGKey(0), *a, train=False))(support, labels, query)
  # Evaluation (training with backbone_bn 'running' takes the same backbone path).
  out = [jax.jit(lambda v, *a, m=m: m.apply(v, *a, train=False))(variables, support, labels, query)
         for m in (joint, separate)]
  for key in out[0]:
    np.testing.assert_allclose(out[0][key], out[1][key], rtol=1e-4, atol=1e-5, err_msg=key)
