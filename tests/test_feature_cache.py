"""A fixed backbone's features computed once per image (mmtjax/feature_cache.py).

The models read cached stage outputs exactly as they would compute them (MMT with the memory in
training and at test time, the baseline, MM-Net's regrouped shots, prototype), the cache computes
only the images it has not seen, keys on the backbone's weights, and the evaluation and training
loops use it only where the backbone cannot change.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmtjax import feature_cache, methods
from mmtjax.methods.prototype import PrototypeMatcher
from mmtjax.models.mmnet import MMNet
from mmtjax.models.mmt import MMT

B, K, S = 1, 2, 32


def _episode(seed=0):
  rng = np.random.default_rng(seed)
  si = rng.normal(size=(B, K, S, S, 3)).astype(np.float32)
  qi = rng.normal(size=(B, S, S, 3)).astype(np.float32)
  sl = np.zeros((B, K, S, S), np.int32)
  sl[..., 8:24, 6:20] = 1
  sl[..., :2, :] = 255
  return si, sl, qi


def _features(model, variables, si, qi, stop):
  images = np.concatenate([si.reshape(B * K, S, S, 3), qi])
  host = jax.device_get(variables)
  cache = feature_cache.FeatureCache(model, host, stop, 2**30)
  return cache.features(images), cache


_VIT = dict(backbone='dinov2_tiny', vit_blocks=(1, 2, 3, 4), vit_norm=False)


@pytest.mark.parametrize('model,stop,modes', [
    # MMT: cached to its last stage; the re-styled branch (training) and transfer (memory on) run
    # the stages after the memory, the original branch and memory off read the cache.
    (MMT(**_VIT, memory_stage='layer3', feature_stages=('layer3', 'layer4'), neck_type='residual',
         memory=dict(num_items=4)), 'layer4',
     ({'train': True}, {'train': False, 'transfer': False}, {'train': False, 'transfer': True})),
    (MMT(**_VIT, memory_stage='layer4', feature_stages=('layer3', 'layer4'), use_memory=False), 'layer4',
     ({'train': False},)),
    (MMNet(**_VIT, reduce_dim=8, num_meta_classes=4, bins=(4, 2), bin_reference_size=4), 'layer3',
     ({'train': False},)),
    (PrototypeMatcher(**_VIT, feature_stages=('layer3', 'layer4')), 'layer4', ({'train': False},)),
    (PrototypeMatcher(**_VIT, feature_stages=('layer3', 'layer4'), choose_stages=1), 'layer4', ({'train': False},)),
], ids=['mmt', 'baseline', 'mmnet', 'prototype', 'prototype_choice'])
def test_models_read_cached_features_as_they_compute_them(model, stop, modes):
  si, sl, qi = _episode()
  rngs = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1), 'memory': jax.random.PRNGKey(2)}
  variables = model.init(rngs, si, sl, qi, train=False)
  feats, _ = _features(model, variables, si, qi, stop)
  for mode in modes:
    kw = {'rngs': {'dropout': jax.random.PRNGKey(3), 'memory': jax.random.PRNGKey(4)},
          'mutable': ['memory']} if mode['train'] else {}
    plain = model.apply(variables, si, sl, qi, **mode, **kw)
    cached = model.apply(variables, si, sl, qi, **mode, features=jax.tree.map(jnp.asarray, feats), **kw)
    if mode['train']:
      (plain, _), (cached, _) = plain, cached
    for key in ('logits', 'logits_orig', 'aux_logits'):
      if key in plain:
        np.testing.assert_allclose(cached[key], plain[key], atol=2e-5, rtol=1e-5, err_msg=f'{mode} {key}')


def test_only_unseen_images_are_computed_and_the_weights_are_part_of_the_key():
  model = PrototypeMatcher(**_VIT, feature_stages=('layer4',))
  si, sl, qi = _episode()
  variables = jax.device_get(model.init(jax.random.PRNGKey(0), si, sl, qi, train=False))
  feature_cache.STORE.clear()
  cache = feature_cache.FeatureCache(model, variables, 'layer4', 2**30)
  images = np.concatenate([si.reshape(B * K, S, S, 3), qi])
  first = cache.features(images)
  n = B * K + B
  assert (cache.hits, cache.misses) == (0, n)
  again = cache.features(images[::-1].copy())  # the same images in another order: all reused
  assert (cache.hits, cache.misses) == (n, n)
  for name in first:
    np.testing.assert_array_equal(again[name], first[name][::-1])
  direct = jax.device_get(model.apply(variables, images, 'layer4', method='backbone_features'))
  for name in direct:
    np.testing.assert_allclose(first[name], direct[name], atol=1e-6)
  # Other weights (another checkpoint's backbone): nothing is shared.
  other = jax.tree.map(lambda x: x + 1.0, variables)
  cache2 = feature_cache.FeatureCache(model, other, 'layer4', 2**30)
  cache2.features(images)
  assert cache2.misses == n
  # The limit: the least recently used go first.
  small = feature_cache.FeatureCache(model, variables, 'layer4', 1)
  feature_cache.STORE.clear()
  small.features(images)
  assert len(feature_cache.STORE.entries) <= 1
  feature_cache.STORE.clear()


def _config(name, **model):
  c = ml_collections.ConfigDict({'model': {'name': name, 'backbone': 'dinov2_tiny', 'feature_stages': ('layer3',),
                                           'memory_stage': 'layer2', 'backbone_bn': 'batch', **model}})
  return c


@pytest.mark.parametrize('name,model,training,stop', [
    ('mmt', {}, True, 'layer3'),                                        # a ViT is frozen by default
    ('baseline', {}, False, 'layer3'),
    ('mmt', {'freeze_backbone': False}, False, None),                   # a trained backbone: never
    ('mmt', {'backbone': 'resnet_tiny', 'freeze_backbone': True}, True, None),  # batch statistics
    ('mmt', {'backbone': 'resnet_tiny', 'freeze_backbone': True}, False, 'layer3'),
    ('mmt', {'backbone': 'resnet_tiny', 'freeze_backbone': True, 'backbone_bn': 'running'}, True, 'layer3'),
    ('mmnet', {}, True, 'layer3'),
])
def test_the_cache_applies_only_where_the_backbone_cannot_change(name, model, training, stop):
  assert methods.get(name).feature_stop(_config(name, **model), training=training) == stop


def test_adaptation_reads_the_cache_where_its_pseudo_episodes_reuse_the_images(shots=1, loss='copy_paste'):
  """Leave-one-out pseudo-episodes (and the query entropy term) rearrange the cached features;
  1-shot copy-paste copies get theirs computed once and appended before the leave-one-out; the adapted predictions are the
  uncached ones. (Augmented copies are new images: the backbone runs on them, and only the final
  forward reads the cache.)"""
  from mmtjax import adapt
  from mmtjax.methods.baseline import BaselineMethod
  model = MMT(**_VIT, memory_stage='layer4', feature_stages=('layer4',), use_memory=False, neck_type='residual')
  si, sl, qi = _episode()
  si, sl = si[:, :shots], sl[:, :shots]
  variables = jax.device_get(model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                                        si, sl, qi, train=False))
  cache = feature_cache.FeatureCache(model, variables, 'layer4', 2**30)
  feats = cache.features(np.concatenate([si.reshape(B * shots, S, S, 3), qi]))
  batch = {'support_images': si, 'support_labels': sl, 'query_images': qi,
           'episode_seed': np.arange(B, dtype=np.int32)}
  adaptation = adapt.Adaptation(steps=1, groups=('neck',), lr=1e-1, loss=loss, use_query=True)
  method = BaselineMethod()

  def logits(v, b):
    return method.apply(model, v, b, train=False)['logits']

  plain = adapt.per_episode(logits, method, model, variables, batch, mode={}, adaptation=adaptation)
  cached = adapt.per_episode(logits, method, model, variables, {**batch, 'features': feats}, mode={},
                             adaptation=adaptation)
  np.testing.assert_allclose(cached, plain, atol=1e-4, rtol=1e-4)
  assert not np.allclose(plain, logits(variables, batch), atol=1e-4)  # it did adapt
