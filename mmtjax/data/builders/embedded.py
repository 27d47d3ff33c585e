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

import numpy as np
import tensorflow_datasets as tfds

from mmtjax.data import synthetic, transforms
from mmtjax.data.builders import construction


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


class MmtjaxShapes(tfds.core.GeneratorBasedBuilder):
  """Textured shapes: a source domain of five styles (20 classes) and a shifted target (6 classes)."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'2.0.0': 'Source images in five styles (synthetic.SOURCE_STYLES).'}
  BUILDER_CONFIGS = [
      ShapesConfig(name='default', description='96 px, 2080 images'),
      ShapesConfig(name='tiny', description='32 px, 1/10 of the images (tests)',
                   image_size=32, fraction=0.1),
  ]

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
