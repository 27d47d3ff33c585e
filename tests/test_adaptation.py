"""Test-time adaptation (mmtjax/adapt.py): the losses against numpy on a toy head, the
batched step's invariances (alone, in a batch, reordered, on two devices, another episode
changed), zero steps, bad groups, and the adapted rows in reports and inference."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax import adapt, config_lib, losses, methods, metrics, parallel, report_files, steps, sweeps
from mmtjax.errors import UserError
from tests.conftest import tiny_config

S = 8  # toy image size


# --- a toy method whose adapted loss numpy can recompute -------------------------------------

class _Toy(nn.Module):
  """Foreground logit = query pixel . (masked mean of the support pixels) + a 1x1 'head'."""

  @nn.compact
  def __call__(self, support_images, support_labels, query_images, *, train):
    fg = (support_labels == 1).astype(jnp.float32)[..., None]
    proto = jnp.sum(support_images * fg, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(fg, axis=(1, 2, 3)), 1.0)
    head = nn.Dense(2, name='head', kernel_init=nn.initializers.normal(0.5))(query_images)
    sim = jnp.einsum('bhwc,bc->bhw', query_images, proto)
    return {'logits': head + jnp.stack([jnp.zeros_like(sim), sim], -1)}


class _ToyMethod(methods.Method):
  name = 'toy_adapt'
  eval_modes = {'toy': {}}
  adapt_groups = {'head': ('head',)}
  adapt_default = ('head',)

  def build(self, config, axis_name=None):
    return _Toy()

  def loss(self, outputs, query_labels, weights, axis_name):
    ce = losses.pixel_cross_entropy(outputs['logits'], query_labels)
    return ce, {'ce': ce}


def _np_logits(params, support_images, support_labels, query):
  """The toy's logits in numpy for one pseudo-episode: supports [k, h, w, 3], query [h, w, 3]."""
  fg = (support_labels == 1)[..., None].astype(np.float64)
  proto = (support_images * fg).sum(axis=(0, 1, 2)) / max(fg.sum(), 1.0)
  head = query @ np.asarray(params['head']['kernel'], np.float64) + np.asarray(params['head']['bias'])
  return head + np.stack([np.zeros(query.shape[:2]), query @ proto], -1)


def _np_ce(logits, labels):
  valid = labels != 255
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  return (nll * valid).sum() / max(valid.sum(), 1)


def _toy_episode(k, seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((k, S, S)) > 0.5).astype(np.int32)
  labels[:, 0, :2] = 255  # some ignored pixels
  return {'support_images': rng.normal(size=(k, S, S, 3)).astype(np.float32), 'support_labels': labels,
          'query_images': rng.normal(size=(S, S, 3)).astype(np.float32), 'episode_seed': np.int32(seed)}


def _toy_params():
  model = _Toy()
  return model, model.init(jax.random.key(0), jnp.zeros((1, 1, S, S, 3)), jnp.zeros((1, 1, S, S), jnp.int32),
                           jnp.zeros((1, S, S, 3)), train=False)


def test_leave_one_out_loss_predicts_each_support_from_the_others():
  model, variables = _toy_params()
  ep = _toy_episode(3)
  a = adapt.Adaptation(steps=1, groups=('head',))
  got = adapt.adaptation_loss(_ToyMethod(), model, variables, ep, jax.random.key(0), mode={}, adaptation=a)
  x, y = ep['support_images'].astype(np.float64), ep['support_labels']
  want = np.mean([_np_ce(_np_logits(variables['params'], np.delete(x, i, 0), np.delete(y, i, 0), x[i]), y[i])
                  for i in range(3)])
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_one_shot_loss_predicts_the_support_from_its_augmented_copy():
  model, variables = _toy_params()
  ep = _toy_episode(1)
  identity = adapt.Adaptation(steps=1, groups=('head',), loss='augment', flip=False, scale=(1.0, 1.0), jitter=0.0)
  got = adapt.adaptation_loss(_ToyMethod(), model, variables, ep, jax.random.key(3), mode={}, adaptation=identity)
  x, y = ep['support_images'].astype(np.float64), ep['support_labels']
  np.testing.assert_allclose(float(got), _np_ce(_np_logits(variables['params'], x, y, x[0]), y[0]), rtol=1e-5)
  # With a flip: the copy is the mirrored support, and its mask is mirrored with it.
  flipped = dataclasses.replace(identity, flip=True)
  for seed in range(6):
    key = jax.random.key(seed)
    # adaptation_loss splits its key per support: the one support's draw is this one.
    image, mask = adapt.augment(jax.random.split(key, 1)[0], jnp.asarray(x[0], jnp.float32), jnp.asarray(y[0]),
                                flipped)
    mirrored = bool(np.allclose(np.asarray(image), x[0, :, ::-1], atol=1e-5))
    assert mirrored or np.allclose(np.asarray(image), x[0], atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask), y[0, :, ::-1] if mirrored else y[0])
    want = _np_ce(_np_logits(variables['params'], np.asarray(image, np.float64)[None], np.asarray(mask)[None],
                             x[0]), y[0])
    got = adapt.adaptation_loss(_ToyMethod(), model, variables, ep, key, mode={}, adaptation=flipped)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_a_zoomed_out_copy_ignores_the_uncovered_border_and_keeps_image_and_mask_aligned():
  mask = np.zeros((16, 16), np.int32)
  mask[4:12, 6:14] = 1
  image = np.repeat(mask[..., None].astype(np.float32), 3, -1)  # channel values = the mask
  a = adapt.Adaptation(steps=1, groups=('head',), flip=False, scale=(0.5, 0.5), jitter=0.0)
  out_image, out_mask = map(np.asarray, adapt.augment(jax.random.key(0), jnp.asarray(image), jnp.asarray(mask), a))
  assert (out_mask[:3] == 255).all() and (out_mask[-3:] == 255).all()  # outside the half-size copy
  inside = out_mask != 255
  assert set(np.unique(out_mask[inside])) == {0, 1}
  np.testing.assert_array_equal(out_image[..., 0][inside] >= 0.5, out_mask[inside] == 1)
  assert 0.2 < (out_mask == 1).sum() / (mask == 1).sum() < 0.3  # a quarter of the area


def test_adaptation_steps_lower_the_loss_and_only_touch_the_groups():
  model, variables = _toy_params()
  ep = {k: v[None] for k, v in _toy_episode(2).items()}
  a = adapt.Adaptation(steps=15, groups=("head",), lr=0.1)
  tuned, trace = adapt.adapt_batch(_ToyMethod(), model, variables, ep, mode={}, adaptation=a)
  assert trace.shape == (1, 15) and float(trace[0, -1]) < 0.9 * float(trace[0, 0])
  assert set(tuned) == {('head', 'kernel'), ('head', 'bias')}


def test_copy_paste_copies_move_the_object_and_its_mask_as_numpy_does():
  from mmtjax import copy_paste
  mask = np.zeros((12, 16), np.int32)
  mask[2:6, 3:8] = 1
  mask[0, :] = 255  # an ignored row stays ignored where nothing is pasted
  image = np.random.default_rng(0).normal(size=(12, 16, 3)).astype(np.float32)
  seen = set()

  @jax.jit
  def copy(key):
    p = copy_paste.draw(key, jnp.asarray(mask), scale=(1.0, 1.0))
    return p, copy_paste.paste(jnp.asarray(image), jnp.asarray(mask), p)

  for seed in range(12):
    p, (out_image, out_mask) = copy(jax.random.key(seed))
    out_image, out_mask = np.asarray(out_image), np.asarray(out_mask)
    # numpy: flip the background and the object, shift the object by whole pixels, paste it on.
    bg = image[:, ::-1] if p.flip_background else image
    bg_mask = mask[:, ::-1] if p.flip_background else mask
    obj, fg = (image[:, ::-1], mask[:, ::-1] == 1) if p.flip_object else (image, mask == 1)
    dy, dx = (int(v) for v in np.asarray(p.shift))
    want_image, want_mask = bg.copy(), bg_mask.copy()
    for y, x in zip(*np.nonzero(fg)):
      if 0 <= y + dy < 12 and 0 <= x + dx < 16:
        want_image[y + dy, x + dx], want_mask[y + dy, x + dx] = obj[y, x], 1
    np.testing.assert_allclose(out_image, want_image, atol=1e-6)
    np.testing.assert_array_equal(out_mask, want_mask)
    seen.add((bool(p.flip_background), bool(p.flip_object), dy, dx))
  assert len(seen) > 6  # the draws differ from key to key
  # n copies, each from its own fold of the key; the support leads with_copies' shots.
  images, labels = copy_paste.with_copies(jax.random.key(5), jnp.asarray(image)[None], jnp.asarray(mask)[None], 2)
  assert images.shape == (3, 12, 16, 3) and labels.shape == (3, 12, 16)
  np.testing.assert_array_equal(np.asarray(labels[0]), mask)
  one = copy_paste.paste(jnp.asarray(image), jnp.asarray(mask),
                         copy_paste.draw(jax.random.fold_in(jax.random.key(5), 1), jnp.asarray(mask)))
  np.testing.assert_array_equal(np.asarray(labels[2]), np.asarray(one[1]))


def test_copy_paste_loss_is_leave_one_out_over_the_support_and_its_copies():
  from mmtjax import copy_paste
  model, variables = _toy_params()
  ep = _toy_episode(1)
  a = adapt.Adaptation(steps=1, groups=('head',), loss='copy_paste', copies=2)
  key = jax.random.key(7)
  shots = adapt.with_pseudo_shots(model, variables, ep, key, a)
  images, labels = copy_paste.with_copies(key, jnp.asarray(ep['support_images']), jnp.asarray(ep['support_labels']), 2)
  np.testing.assert_array_equal(np.asarray(shots['support_images']), np.asarray(images))
  got = adapt.adaptation_loss(_ToyMethod(), model, variables, ep, jax.random.key(0), mode={}, adaptation=a,
                              shots=shots)
  x, y = np.asarray(images, np.float64), np.asarray(labels)
  want = np.mean([_np_ce(_np_logits(variables['params'], np.delete(x, i, 0), np.delete(y, i, 0), x[i]), y[i])
                  for i in range(3)])
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


# --- the tiny MMT / MM-Net through the compiled evaluation step ------------------------------

def _real(tfds_dir, model_name='mmt', shot=2, **fields):
  config = tiny_config(tfds_dir, f'model={model_name},shot={shot}')
  config.eval.adapt.update(dict(steps=2, lr=1e-2, **fields))
  if model_name == 'mmnet':
    config.model.bins = (4, 2)  # a smaller FEM head: the adaptation code does not depend on it
  method = methods.for_config(config)
  model = method.build(config)
  s = config.data.image_size
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)},
                         jnp.zeros((1, shot, s, s, 3)), jnp.zeros((1, shot, s, s), jnp.int32),
                         jnp.zeros((1, s, s, 3)), train=False)
  rng = np.random.default_rng(1)
  b = 4
  batch = {'support_images': rng.normal(size=(b, shot, s, s, 3)).astype(np.float32),
           'support_labels': (rng.random((b, shot, s, s)) > 0.6).astype(np.int32),
           'query_images': rng.normal(size=(b, s, s, 3)).astype(np.float32),
           'query_labels': (rng.random((b, s, s)) > 0.6).astype(np.int32),
           'episode_seed': np.array([11, 22, 33, 44], np.int32)}
  return config, method, model, variables, batch, adapt.from_config(config, method)


def _step(method, model, adaptation, mode, output='counts', kshot='model'):
  return jax.jit(lambda v, b: steps.eval_step(v, b, method=method, model=model, mode=mode, output=output,
                                              kshot=kshot, adaptation=adaptation)[0])


def test_an_episodes_scores_do_not_depend_on_its_batch_order_or_device_count(tfds_dir):
  # One shot with copy-paste pseudo-shots: random copies, then leave-one-out over them (the
  # K >= 2 loss's path) and the query entropy.
  config, method, model, variables, batch, a = _real(tfds_dir, shot=1, use_query=True, loss='copy_paste')
  mode = {'transfer': True}
  step = _step(method, model, a, mode)
  together = np.asarray(step(variables, batch))
  order = np.array([2, 0, 3, 1])
  np.testing.assert_array_equal(step(variables, {k: v[order] for k, v in batch.items()}), together[order])
  alone = step(variables, {k: v[1:2] for k, v in batch.items()})
  np.testing.assert_array_equal(alone[0], together[1])
  devices = jax.local_devices()[:2]
  pmapped = parallel.make_eval_step(method, model, mode, devices, adaptation=a)
  out, _ = pmapped(parallel.replicate(variables, devices), {k: v.reshape(2, 2, *v.shape[1:]) for k, v in batch.items()})
  np.testing.assert_array_equal(np.asarray(out).reshape(4, -1), together)


def test_the_adapted_parameters_see_nothing_outside_their_episode(tfds_dir):
  config, method, model, variables, batch, a = _real(tfds_dir, use_query=True)
  mode = {'transfer': True}
  run = jax.jit(lambda b: adapt.adapt_batch(method, model, variables, b, mode=mode, adaptation=a)[0])
  tuned = run(batch)
  changed = dict(batch)
  changed['query_labels'] = 1 - batch['query_labels']  # every episode's query labels
  changed['query_images'] = batch['query_images'].copy()
  changed['query_images'][1:] += 3.0  # other episodes' query images
  changed['support_images'] = batch['support_images'].copy()
  changed['support_images'][1:] *= -1  # and their supports
  again = run(changed)
  for path in tuned:
    np.testing.assert_array_equal(np.asarray(again[path][0]), np.asarray(tuned[path][0]))
    assert not np.array_equal(np.asarray(again[path][1]), np.asarray(tuned[path][1]))
  before = adapt.split(variables['params'], ('neck',))[0]
  assert set(tuned) == set(before)
  assert all(not np.allclose(np.asarray(tuned[p][0]), np.asarray(before[p])) for p in tuned)


@pytest.mark.parametrize('model_name,shot,kshot', [('mmt', 2, 'vote'), ('mmnet', 1, 'model')])
def test_zero_steps_equal_the_unadapted_evaluation_and_steps_change_it(tfds_dir, model_name, shot, kshot):
  config, method, model, variables, batch, a = _real(tfds_dir, model_name, shot)
  mode = next(iter(method.eval_modes.values()))
  plain = np.asarray(_step(method, model, None, mode, 'logits', kshot)(variables, batch))
  zero = np.asarray(_step(method, model, dataclasses.replace(a, steps=0), mode, 'logits', kshot)(variables, batch))
  np.testing.assert_allclose(zero, plain, atol=1e-5)
  labels = batch['query_labels']
  if kshot == 'vote':  # logits [B, K, h, w, 2]: compare each shot's 1-shot prediction
    labels = np.repeat(labels, shot, 0)
  np.testing.assert_array_equal(metrics.episode_counts(zero.reshape(-1, *zero.shape[-3:]), labels),
                                metrics.episode_counts(plain.reshape(-1, *plain.shape[-3:]), labels))
  adapted = np.asarray(_step(method, model, a, mode, 'logits', kshot)(variables, batch))
  assert adapted.shape == plain.shape and np.abs(adapted - plain).max() > 1e-3


@pytest.mark.parametrize('model_name,groups,listed', [('mmt', ('backbone',), "['neck']"),
                                                      ('mmnet', ('neck', 'encoder'), "['head', 'neck', 'meta_classes']")])
def test_a_group_the_method_lacks_is_one_line_listing_its_groups(tfds_dir, model_name, groups, listed):
  config = tiny_config(tfds_dir, f'model={model_name}')
  config.eval.adapt.update(dict(steps=3, groups=groups))
  with pytest.raises(UserError, match='it has ' + listed.replace('[', r'\[').replace(']', r'\]')) as e:
    config_lib.validate(config)
  assert '\n' not in str(e.value)
  config.eval.adapt.update(dict(groups=None, loss='leave_one_out'))
  config.data.shot = 1
  with pytest.raises(UserError, match="'leave_one_out' needs data.shot >= 2"):
    config_lib.validate(config)
  config.eval.adapt.loss, config.data.shot = 'copy_paste', 5
  with pytest.raises(UserError, match="'copy_paste' makes pseudo-shots for 1-shot episodes"):
    config_lib.validate(config)


def test_reports_and_predictions_carry_the_adapted_rows(tfds_dir, trained_workdir, tmp_path):
  config = tiny_config(tfds_dir)
  config.eval.num_episodes = 4
  config.eval.adapt.steps = 2
  report = sweeps.evaluate(config, trained_workdir, output=str(tmp_path / 'r.json'))
  assert list(report['results']) == ['memory_on', 'memory_off', 'memory_on+adapt', 'memory_off+adapt']
  assert report['adapt']['steps'] == 2 and report['adapt']['loss'] == 'copy_paste'
  assert report_files.report_name({**report, 'step': 2}, 'latest').endswith('_1shot_custom_adapt2.json')
  assert '+adapt rows: 2 adam steps' in report_files.format_report(report)
  from mmtjax.predict import Predictor
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
  mask = np.zeros((40, 30), np.uint8)
  mask[10:30, 5:20] = 1
  plain = Predictor.from_workdir(trained_workdir)
  tuned = Predictor.from_workdir(trained_workdir, adapt_steps=5)
  assert plain.adaptation is None and tuned.adaptation.steps == 5
  p0, p1 = plain.segment(image, [image], [mask]), tuned.segment(image, [image], [mask])
  assert p1.mask.shape == (40, 30) and not np.allclose(p0.logit, p1.logit)
