"""tfds builder of the embedded cross-domain dataset (see mmtjax.data.synthetic).

Images and label maps are stored as PNG bytes in array_record files and read
back through `builder.as_data_source(split)`, the same path a real dataset
takes; TensorFlow is not needed. The 'tiny' config is for tests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from mmtjax.data import synthetic, transforms
from mmtjax.data.builders import construction, dataset
from mmtjax.data.split_data import SplitData
from mmtjax.errors import UserError


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  image_size: int = 96
  fraction: float = 1.0  # of each split's image count
  seed: int = 0



def _make(args):
  split, index, seed, size = args
  image, label = synthetic.generate_example(split, index, seed=seed, size=size)
  classes, counts = np.unique(label[(label != 0) & (label != 255)], return_counts=True)
  return index, {'image': transforms.encode_png(image), 'label': transforms.encode_png(label),
                 'classes': classes.astype(np.int32), 'areas': counts.astype(np.int32)}


class MmtjaxShapes(dataset.Dataset, tfds.core.GeneratorBasedBuilder):
  """Textured shapes: a source domain of five styles (20 classes) and a shifted target (6 classes).

  The library's default dataset (configs/default.py): built from code, its
  test protocol the config's own ('custom'). Its source splits have folds
  (synthetic.fold_classes); fold -1 trains on the source and tests on the
  target domain.
  """

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'2.0.0': 'Source images in five styles (synthetic.SOURCE_STYLES).'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='96 px, 2080 images'),
      ShapesConfig(name='tiny', description='32 px, 1/10 of the images (tests)',
                   image_size=32, fraction=0.1),
  ]

  DISPLAY_NAME = 'shapes'
  SPLITS = tuple(synthetic.SPLITS)
  GENERATED = True
  DEFAULT = True
  RECORD_IDS = False

  @classmethod
  def defaults(cls, fold):
    return dict(train_split='source_train', val_split='source_test',
                test_split='target_test' if fold < 0 else 'source_test', protocol='custom')

  @classmethod
  def check_split(cls, split):
    if split not in synthetic.SPLITS:
      raise UserError(f'unknown split {split!r} of {cls.name}; choose from {list(synthetic.SPLITS)}')

  @classmethod
  def generate(cls, data) -> MmtjaxShapes:
    return load_builder(data.get('builder_config', 'default'), data.data_dir)

  @classmethod
  def describe(cls):
    return 'embedded: built from code (source and target domains)'

  def names(self):
    return synthetic.CLASS_NAMES

  def split_data(self, data, source, index, split, requested, training, tested_elsewhere):
    """A source split's fold: its base classes train, its novel ones test; the target's all."""
    del requested, tested_elsewhere
    classes = synthetic.SPLITS[split].classes
    if data.fold >= 0 and synthetic.SPLITS[split].domain == 'source':
      novel = synthetic.fold_classes(data.fold)
      classes = tuple(c for c in classes if (c not in novel) == training)
    return SplitData(source, index, classes, self.name, split, os.fspath(self.data_dir), self.names(),
                     builder=self)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG bytes
            'label': tfds.features.Tensor(shape=(), dtype=np.object_),  # PNG bytes
            'classes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'areas': tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated, nothing to download.
    return {split: self._generate_examples(split) for split in synthetic.SPLITS}

  def _generate_examples(self, split):
    cfg = self.builder_config
    n = max(1, int(round(synthetic.SPLITS[split].num_images * cfg.fraction)))
    jobs = [(split, i, cfg.seed, cfg.image_size) for i in range(n)]
    if n < 64:
      yield from map(_make, jobs)
      return
    # 'spawn' because the parent may hold JAX threads, which fork would copy.
    ctx = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(mp_context=ctx) as pool:
      yield from pool.map(_make, jobs, chunksize=32)


def load_builder(config_name: str = 'default', data_dir: str | None = None) -> MmtjaxShapes:
  """The builder, generating and caching the dataset on first use."""
  builder = construction.new_builder(MmtjaxShapes, config=config_name, data_dir=data_dir,
                                     file_format='array_record')
  if not builder.is_prepared():
    from mmtjax import progress
    progress.line(f'generating the embedded dataset into {builder.data_dir} (first use; read from there after)')
    with contextlib.redirect_stdout(io.StringIO()):  # tfds' "Downloading and preparing ... Unknown size"
      builder.download_and_prepare()
  return builder
