"""Dataset registry: config.data -> (random-access source, class index, episode classes)."""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from mmtjax.data import episodes, synthetic
from mmtjax.data.builders import (
  chest_xray,
  coco20i,
  construction,
  deepglobe,
  embedded,
  fss1000,
  isic2018,
  pascal5i,
  raw,
  suim,
)
from mmtjax.errors import UserError

RAW_BUILDERS = {cls.name: cls for cls in (pascal5i.Pascal5i, coco20i.Coco20i, fss1000.Fss1000,
                                          deepglobe.Deepglobe, isic2018.Isic2018,
                                          chest_xray.ChestXray, suim.Suim)}
DATASETS = ('mmtjax_shapes', *RAW_BUILDERS)


@dataclasses.dataclass
class SplitData:
  source: object  # tfds data source: len() and [i] -> dict of numpy
  index: dict[int, np.ndarray]
  classes: tuple[int, ...]


def _embedded_classes(data: ml_collections.ConfigDict, split: str, training: bool) -> tuple[int, ...]:
  domain_classes = synthetic.SPLITS[split].classes
  if data.fold < 0 or synthetic.SPLITS[split].domain != 'source':
    return domain_classes
  novel = synthetic.fold_classes(data.fold)
  return tuple(c for c in domain_classes if (c not in novel) == training)


def load_raw_builder(name: str, data_dir: str | None, manual_dir: str | None) -> raw.RawBuilder:
  """A raw-data builder, built from `manual_dir` on first use (then read from data_dir)."""
  builder = construction.new_builder(RAW_BUILDERS[name], data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    manual_dir = builder.check_manual_dir(manual_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    raw.write_report(builder)
  return builder


def _process_zero_first(prepare):
  """Runs `prepare` (which may build a dataset) on process 0 first, then on the others.

  Concurrent first builds by several processes would race on the same tfds
  directory; the others start only once process 0 has finished.
  """
  if jax.process_count() == 1:
    return prepare()
  result = prepare() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices('mmtjax: dataset prepared on process 0')
  return result if jax.process_index() == 0 else prepare()


def _damaged(where: str, e: BaseException) -> UserError:
  detail = ' '.join(str(e).split())[:160]
  return UserError(f'the prepared dataset files in {where} are missing or corrupt ({type(e).__name__}: '
                   f'{detail}); delete that folder and rerun to rebuild it')


def open_source(builder, split: str):
  """builder.as_data_source(split), checked by reading its first and last record."""
  try:
    source = builder.as_data_source(split)
    if len(source):
      source[0], source[len(source) - 1]  # noqa: B018 - a read that fails on a damaged file.
  except Exception as e:  # noqa: BLE001 - array_record and tfds raise many types here.
    raise _damaged(os.fspath(builder.data_dir), e) from e
  return ReadChecked(source, os.fspath(builder.data_dir))


class ReadChecked:
  """A data source whose failed reads name the dataset folder and how to rebuild it."""

  def __init__(self, source, where: str):
    self._source, self._where = source, where

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    try:
      return self._source[index]
    except Exception as e:  # noqa: BLE001
      raise _damaged(self._where, e) from e

  def __getattr__(self, name):
    return getattr(self._source, name)


def load_split(data: ml_collections.ConfigDict, split: str, *, training: bool) -> SplitData:
  """The split's source, class index and the classes its episodes use.

  Training takes a fold's base classes and testing its novel ones; fold -1
  uses every class of the split (the cross-domain setting, and datasets
  without folds). The index (class -> images with >= data.min_pixels of it)
  is built once per split and threshold and cached beside the data.
  """
  if data.dataset not in DATASETS:
    raise UserError(f'unknown dataset {data.dataset!r}; available: {list(DATASETS)}')
  tfds.disable_progress_bar()
  if data.dataset == 'mmtjax_shapes':
    if split not in synthetic.SPLITS:
      raise UserError(f'unknown split {split!r} of {data.dataset}; choose from {list(synthetic.SPLITS)}')
    builder = _process_zero_first(lambda: embedded.load_builder(data.get('builder_config', 'default'),
                                                                data.data_dir))
  else:
    builder = _process_zero_first(lambda: load_raw_builder(data.dataset, data.data_dir,
                                                           data.get('manual_dir')))
    if split not in builder.SPLITS:
      raise UserError(f'unknown split {split!r} of {data.dataset}; choose from {list(builder.SPLITS)}')
  source = open_source(builder, split)
  index = _process_zero_first(lambda: episodes.cached_class_index(
      source, os.fspath(builder.data_dir), split, data.min_pixels))
  if data.dataset == 'mmtjax_shapes':
    classes = _embedded_classes(data, split, training)
  else:
    classes = builder.split_classes(split, data.fold, training, tuple(sorted(index)))
  return SplitData(source, index, classes)
