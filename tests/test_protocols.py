"""Test protocols, augmentation transforms and scoring at the original resolution."""

import hashlib
import os
import subprocess
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmtjax import metrics, ops
from mmtjax.data import datasets, episodes, pipeline, transforms

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _index():
  rng = np.random.default_rng(0)
  return {c: np.sort(rng.choice(500, 12, replace=False)) for c in range(1, 21)}


def _digest(seed=0):
  sampler = episodes.EpisodeSampler(_index(), tuple(range(1, 21)), shot=5, seed=seed)
  text = repr(sampler.test_list(1000))
  return hashlib.sha256(text.encode()).hexdigest()


def test_a_1000_episode_list_is_identical_in_another_process():
  code = 'from tests.test_protocols import _digest; print(_digest())'
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONHASHSEED='123'), check=True).stdout.split()[-1]
  assert out == _digest()
  assert _digest(seed=1) != _digest()


@pytest.mark.parametrize('order', ['random', 'round_robin'])
def test_test_lists_are_seeded_and_supports_differ_from_the_query(order):
  a = episodes.EpisodeSampler(_index(), tuple(range(1, 8)), shot=5, seed=0).test_list(200, order)
  b = episodes.EpisodeSampler(_index(), tuple(range(1, 8)), shot=5, seed=0).test_list(200, order)
  c = episodes.EpisodeSampler(_index(), tuple(range(1, 8)), shot=5, seed=1).test_list(200, order)
  assert a == b and a != c
  assert all(e.query not in e.supports and len(set(e.supports)) == 5 for e in a)
  if order == 'round_robin':  # SUIM: episode i has class i mod 7
    assert [e.class_id for e in a[:14]] == [1, 2, 3, 4, 5, 6, 7] * 2


def test_protocol_table():
  data = ml_collections.ConfigDict(dict(dataset='pascal5i', image_size=473, protocol='pfenet'))
  ev = ml_collections.ConfigDict(dict(num_episodes=10, seed=5))
  p = datasets.test_protocol(data, ev)
  assert (p.num_episodes, p.seed, p.image_size, p.resize, p.original_resolution) == (
      5000, 321, 473, 'longer_side_pad', True)
  data.protocol = 'hsnet'
  for dataset, n in (('pascal5i', 1000), ('deepglobe', 600), ('isic2018', 600), ('chest_xray', 600)):
    data.dataset = dataset
    p = datasets.test_protocol(data, ev)
    assert (p.num_episodes, p.seed, p.image_size, p.resize, p.order) == (n, 0, 400, 'square', 'anchors')
  data.dataset = 'fss1000'
  assert datasets.test_protocol(data, ev).order == 'anchors'
  data.dataset = 'suim'  # Not tested by the anchors: mmtjax's sampler, classes in turn.
  assert datasets.test_protocol(data, ev).order == 'round_robin'
  data.protocol = 'uniform'  # mmtjax's sampler with the anchors' counts, size and seed.
  assert datasets.test_protocol(data, ev).order == 'round_robin'
  data.dataset = 'fss1000'
  assert datasets.test_protocol(data, ev).order == 'each_query'
  data.dataset = 'isic2018'
  assert (datasets.test_protocol(data, ev).order, datasets.test_protocol(data, ev).num_episodes) == ('random', 600)
  data.protocol = 'pfenet'
  with pytest.raises(ValueError, match="'pfenet' is defined for"):
    datasets.test_protocol(data, ev)


def _pair(h=37, w=53, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
  label = np.zeros((h, w), np.uint8)
  label[8:30, 10:40] = 1
  label[0, :] = 255
  return image, label


def _check_mask(label):
  assert set(np.unique(label)) <= {0, 1, 255}
  assert 255 in label


@pytest.mark.parametrize('seed', range(5))
def test_geometric_transforms_keep_masks_binary_with_ignore(seed):
  rng = np.random.default_rng(seed)
  image, label = _pair(seed=seed)
  for out in (transforms.resize(image, label, 64), transforms.resize_longer_side(image, label, 80),
              transforms.random_scale(image, label, rng), transforms.random_rotate(image, label, rng, p=1.0),
              transforms.pad_to(image, label, 60), transforms.random_crop(image, label, rng, 64),
              transforms.augment_mmnet(image, label, rng, 48)):
    _check_mask(out[1])
    assert out[0].dtype == np.uint8 and out[0].shape[:2] == out[1].shape
  im, lb = transforms.random_crop(image, label, rng, 64)
  assert lb.shape == (64, 64) and im.shape == (64, 64, 3)
  # Crop padding: mean colour for the image, 255 for the mask.
  im, lb = transforms.random_crop(image, label, rng, 80)
  assert lb[0, 0] == 255 and tuple(im[0, 0]) == transforms.MEAN_PIXEL


def test_gaussian_blur_matches_opencv_kernel():
  np.testing.assert_allclose(transforms.gaussian_kernel(5), [1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16])
  image = np.zeros((9, 9, 3), np.uint8)
  image[4, 4] = 160
  out = transforms.gaussian_blur(image, np.random.default_rng(0), p=1.0)
  k = np.array([1, 4, 6, 4, 1]) / 16
  np.testing.assert_allclose(out[2:7, 2:7, 0], np.rint(160 * np.outer(k, k)), atol=1)


def test_pad_to_and_longer_side():
  image, label = _pair(37, 53)
  im, lb = transforms.pad_to(*transforms.resize_longer_side(image, label, 40), 40)
  assert lb.shape == (40, 40) and np.all(lb[28:] == 255)  # 37 * 40 / 53 = 28 rows, then padding
  assert np.all(im[28:] == 0)


def _reference_original_counts(diff: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """numpy reference of PFENet's scoring: the [h, w] logit difference (or [K, h, w], voted)
  resized with aligned corners to the mask's longer side L, cropped to H x W, thresholded at 0."""
  h, w = mask.shape
  size = max(h, w)
  diffs = diff.reshape(-1, *diff.shape[-2:]).astype(np.float64)
  up = ops.align_corners_matrix(diffs.shape[1], size) @ diffs @ ops.align_corners_matrix(diffs.shape[2], size).T
  pred = up[:, :h, :w] > 0
  if diff.ndim == 3:  # HSNet's vote
    votes = pred.sum(axis=0)
    pred = votes / max(votes.max(), 1) >= 0.5
  valid = mask != 255
  out = []
  for fg in (True, False):
    p, t = (pred == fg) & valid, ((mask == 1) == fg) & valid
    out += [np.sum(p & t), np.sum(p | t)]
  return np.array(out)


def _device_original_counts(diffs, masks):
  canvas, sizes = metrics.original_canvas(masks)
  return np.asarray(metrics.original_resolution_counts(jnp.asarray(np.stack(diffs)), jnp.asarray(canvas),
                                                       jnp.asarray(sizes)))


def test_original_resolution_scoring_recovers_a_perfect_prediction():
  _, label = _pair(37, 53)
  # The label as the model sees it: longer side 40, padded; a logit map agreeing with it.
  small = transforms.pad_to(*transforms.resize_longer_side(np.zeros((37, 53, 3), np.uint8), label, 40), 40)[1]
  diff = np.where(small == 1, 5.0, -5.0).astype(np.float32)
  counts = _device_original_counts([diff], [label])[0]
  assert counts[0] / counts[1] > 0.9 and counts[2] / counts[3] > 0.9
  np.testing.assert_array_equal(counts, _reference_original_counts(diff, label))


def test_device_original_resolution_scoring_equals_the_numpy_reference():
  rng = np.random.default_rng(0)
  # Smooth logits (few pixels near the threshold), masks of different sizes and orientations, one
  # larger than a canvas step, ignored pixels; 1-shot and 3 shots voted.
  grid = np.linspace(-3, 3, 24)
  masks = [rng.choice([0, 1, 1, 255], size=shape).astype(np.uint8)
           for shape in ((37, 53), (60, 21), (130, 90), (1, 7))]
  for k in (None, 3):
    diffs = []
    for _ in masks:
      a, b, c = rng.normal(size=3)
      shots = [np.sin(a * grid[:, None] + b) + np.cos(c * grid[None, :]) for _ in range(k or 1)]
      diffs.append(np.stack(shots).astype(np.float32) if k else shots[0].astype(np.float32))
    got = _device_original_counts(diffs, masks)
    want = np.stack([_reference_original_counts(d, m) for d, m in zip(diffs, masks)])
    np.testing.assert_array_equal(got, want)


def test_loader_longer_side_pad_returns_original_masks(tfds_dir):
  from mmtjax.data import datasets
  from tests.conftest import tiny_config
  config = tiny_config(tfds_dir)
  split = datasets.load_split(config.data, 'target_test', training=False)
  loader = pipeline.EpisodeLoader(split.source, image_size=40, augment='none', seed=0, num_workers=2,
                                  resize='longer_side_pad')
  eps = episodes.EpisodeSampler(split.index, split.classes, 1, 0).test_list(3)
  batch = loader.batch(eps, [(0, i) for i in range(3)], (1, 4))
  assert batch['query_images'].shape == (1, 4, 40, 40, 3)
  # Originals padded with 255 onto a canvas (a multiple of 128), their sizes alongside.
  assert batch['original_labels'].shape == (1, 4, 128, 128) and np.all(batch['original_labels'][0, 0, 32:] == 255)
  np.testing.assert_array_equal(batch['original_sizes'][0, 0], [32, 32])
  assert not batch['valid'][0, 3]
