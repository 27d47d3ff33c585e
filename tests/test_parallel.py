"""pmap on 4 fake CPU devices equals one device on the global batch."""

import jax
import numpy as np
import pytest

from configs import default
from mmtjax import parallel
from mmtjax.models import get_model
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels


def _config():
  config = default.get_config()
  config.data.image_size = 32
  config.model.embed_dim = 8
  config.model.dropout = 0.0  # per-device dropout masks differ by design
  config.memory.num_items = 4
  config.train.optimizer = 'sgd'
  config.train.lr = 0.05
  config.train.warmup_steps = 0
  return config


def _global_batch(n=8, k=1, s=32):
  rng = np.random.default_rng(0)
  sl = np.zeros((n, k, s, s), np.uint8)
  ql = np.zeros((n, s, s), np.uint8)
  for i in range(n):
    y, x = rng.integers(0, 16, 2)
    sl[i, :, y:y + 14, x:x + 14] = 1
    ql[i, x:x + 12, y:y + 12] = 1
  ql[:, 0, :] = 255
  return {'support_images': rng.normal(size=(n, k, s, s, 3)).astype(np.float32),
          'support_labels': sl,
          'query_images': rng.normal(size=(n, s, s, 3)).astype(np.float32),
          'query_labels': ql}


def _run(devices, steps=2):
  config = _config()
  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                  trainable_labels(state.params, config), devices=devices)
  rstate = parallel.replicate(state, devices)
  batch = _global_batch()
  d = len(devices)
  batch = {k: v.reshape(d, v.shape[0] // d, *v.shape[1:]) for k, v in batch.items()}
  for _ in range(steps):
    rstate, stats = step(rstate, parallel.shard(batch, devices))
  return rstate, stats


@pytest.mark.skipif(jax.local_device_count() < 4, reason='needs 4 (fake) devices')
def test_four_devices_equal_one_device_on_global_batch():
  devs = jax.local_devices()
  one, stats1 = _run(devs[:1])
  four, stats4 = _run(devs[:4])
  a, b = parallel.unreplicate(one), parallel.unreplicate(four)
  for name in ('params', 'model_state'):
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(float(stats1['loss'][0]), float(stats4['loss'][0]), rtol=1e-4)
  # Every replica holds the same memory and BatchNorm statistics.
  for leaf in jax.tree.leaves(four.model_state):
    shards = [np.asarray(s.data)[0] for s in leaf.addressable_shards]
    for s in shards[1:]:
      np.testing.assert_array_equal(s, shards[0])


def test_indivisible_global_batch_is_a_clear_error():
  with pytest.raises(ValueError, match='not divisible by 4 devices'):
    parallel.check_divisible(6, 4)


def test_frozen_backbone_gets_no_update_and_no_optimizer_state():
  config = _config()
  config.model.freeze_backbone = True
  config.train.optimizer = 'adamw'
  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  opt_leaves = jax.tree.leaves(state.opt_state)
  head = {k: v for k, v in state.params.items() if k != 'encoder'}
  n_train = sum(x.size for x in jax.tree.leaves(head))
  # AdamW keeps two moments per trainable parameter (plus counters), none for the encoder.
  assert sum(x.size for x in opt_leaves) <= 2 * n_train + 8
  devs = jax.local_devices()[:1]
  step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                  trainable_labels(state.params, config), devices=devs)
  before = jax.device_get(state.params)
  batch = {k: v[None] for k, v in _global_batch(2).items()}
  new, _ = step(parallel.replicate(state, devs), parallel.shard(batch, devs))
  after = parallel.unreplicate(new.params)
  for x, y in zip(jax.tree.leaves(before['encoder']), jax.tree.leaves(after['encoder'])):
    np.testing.assert_array_equal(x, y)
  assert not np.allclose(before['neck']['kernel'], after['neck']['kernel'])
