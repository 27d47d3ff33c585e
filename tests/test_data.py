"""The embedded dataset through tfds, the episode sampler, transforms, the loader."""

import numpy as np
import pytest

from mmtjax.data import datasets, episodes, pipeline, synthetic, transforms
from tests.conftest import tiny_config


def test_generation_is_deterministic_and_labels_are_valid():
  a = synthetic.generate_example('target_test', 3, size=48)
  b = synthetic.generate_example('target_test', 3, size=48)
  np.testing.assert_array_equal(a[0], b[0])
  values = set(np.unique(a[1]).tolist())
  assert values <= {0, 255, *synthetic.TARGET_CLASSES}
  src = synthetic.generate_example('source_train', 0, size=48)[1]
  assert set(np.unique(src).tolist()) <= {0, 255, *synthetic.SOURCE_CLASSES}


def test_target_style_shifts_channel_statistics():
  src = np.stack([synthetic.generate_example('source_test', i, size=48)[0] for i in range(20)])
  tgt = np.stack([synthetic.generate_example('target_test', i, size=48)[0] for i in range(20)])
  # Washed-out contrast and a colour cast: lower spread, different channel balance.
  assert tgt.std(axis=(1, 2)).mean() < 0.8 * src.std(axis=(1, 2)).mean()
  assert abs(tgt[..., 2].mean() - tgt[..., 0].mean()) > 20


def test_tfds_builder_reads_back_and_folds_split_classes(tfds_dir):
  config = tiny_config(tfds_dir, 'fold=1')
  train = datasets.load_split(config.data, 'source_train', training=True)
  test = datasets.load_split(config.data, 'source_test', training=False)
  assert test.classes == (6, 7, 8, 9, 10)
  assert not set(train.classes) & set(test.classes) and len(train.classes) == 15
  record = train.source[0]
  image = transforms.decode_image(record['image'], 'x')
  assert image.shape == (32, 32, 3)
  target = datasets.load_split(tiny_config(tfds_dir).data, 'target_test', training=False)
  assert target.classes == synthetic.TARGET_CLASSES


def test_sampler_is_deterministic_and_support_differs_from_query():
  index = {c: np.arange(c, c + 10) for c in range(1, 6)}
  s1 = episodes.EpisodeSampler(index, list(index), shot=5, seed=0)
  s2 = episodes.EpisodeSampler(index, list(index), shot=5, seed=0)
  s3 = episodes.EpisodeSampler(index, list(index), shot=5, seed=1)
  eps = [s1.episode(3, i) for i in range(50)]
  assert eps == [s2.episode(3, i) for i in range(50)]
  assert eps != [s3.episode(3, i) for i in range(50)]
  for e in eps:
    assert e.query not in e.supports and len(set(e.supports)) == 5
    assert e.query in index[e.class_id]
  assert s1.test_list(20) == s2.test_list(20)


def test_sampler_excludes_small_classes(caplog):
  index = {1: np.arange(3), 2: np.arange(10)}
  sampler = episodes.EpisodeSampler(index, [1, 2], shot=5, seed=0)
  assert sampler.classes == (2,)
  assert 'class 1 has 3 images' in caplog.text
  with pytest.raises(ValueError, match='no class'):
    episodes.EpisodeSampler({1: np.arange(3)}, [1], shot=5, seed=0)


def test_class_mask_and_resize_keep_ignore_label():
  label = np.zeros((10, 10), np.uint8)
  label[2:6, 2:6] = 7
  label[2, 2:6] = 255
  image = np.zeros((10, 10, 3), np.uint8)
  _, small = transforms.resize(image, label, 6)
  mask = transforms.class_mask(small, 7)
  assert set(np.unique(mask).tolist()) <= {0, 1, 255} and 255 in mask and 1 in mask


def test_loader_batches_are_shaped_and_padded(tfds_dir):
  config = tiny_config(tfds_dir, 'shot=2')
  split = datasets.load_split(config.data, 'target_test', training=False)
  sampler = episodes.EpisodeSampler(split.index, split.classes, 2, seed=0)
  loader = pipeline.EpisodeLoader(split.source, image_size=32, augment=False, seed=0, num_workers=2)
  batch = next(pipeline.eval_batches(loader, sampler.test_list(3), (2, 2)))
  assert batch['support_images'].shape == (2, 2, 2, 32, 32, 3)
  assert batch['query_labels'].shape == (2, 2, 32, 32)
  assert batch['valid'].tolist() == [[True, True], [True, False]]


def test_corrupt_image_names_the_example():
  with pytest.raises(ValueError, match='cannot decode image of example 4'):
    transforms.decode_image(b'not a png', 'image of example 4')


def _style_features(image):
  """Channel means and stds, saturation and high-frequency energy of a raw uint8 image."""
  x = image.astype(np.float32) / 255
  grey = x.mean(-1)
  hf = np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()
  return np.concatenate([x.mean((0, 1)), x.std((0, 1)), [(x.max(-1) - x.min(-1)).mean(), hf]])


def test_source_holds_every_style_and_the_target_style_is_none_of_them():
  from mmtjax.data import synthetic
  feats = {}
  for i in range(150):
    style = synthetic.image_style('source_train', i)
    feats.setdefault(style, []).append(_style_features(synthetic.generate_example('source_train', i, size=32)[0]))
  assert set(feats) == set(synthetic.SOURCE_STYLES)
  assert all(synthetic.image_style('target_test', i) == 'target' for i in range(10))
  target = [_style_features(synthetic.generate_example('target_test', i, size=32)[0]) for i in range(40)]
  centres = {k: np.mean(v, axis=0) for k, v in feats.items()}
  centres['target'] = np.mean(target, axis=0)
  # Every target image is nearer the target centre than any source style's, and the
  # target centre lies further from every source style than target images lie from it.
  nearest = [min(centres, key=lambda k: np.linalg.norm(f - centres[k])) for f in target]
  assert nearest == ['target'] * len(target)
  spread = np.mean([np.linalg.norm(f - centres['target']) for f in target])
  assert min(np.linalg.norm(centres['target'] - centres[s]) for s in synthetic.SOURCE_STYLES) > spread
  # A pure function of (seed, split, index).
  a, b = synthetic.generate_example('source_train', 7, size=32), synthetic.generate_example('source_train', 7, size=32)
  np.testing.assert_array_equal(a[0], b[0])
