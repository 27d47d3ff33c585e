"""Dataset registry: config.data -> (random-access source, class index, class lists)."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmtjax.data import episodes, synthetic
from mmtjax.data.builders import embedded


@dataclasses.dataclass
class SplitData:
  source: object  # tfds data source: len() and [i] -> dict of numpy
  index: dict[int, np.ndarray]
  classes: tuple[int, ...]


def _classes(data: ml_collections.ConfigDict, split: str, training: bool) -> tuple[int, ...]:
  domain_classes = synthetic.SPLITS[split].classes
  if data.fold < 0 or synthetic.SPLITS[split].domain != 'source':
    return domain_classes
  novel = synthetic.fold_classes(data.fold)
  return tuple(c for c in domain_classes if (c not in novel) == training)


def load_split(data: ml_collections.ConfigDict, split: str, *, training: bool) -> SplitData:
  """The split's source and index; training takes a fold's base classes, test its novel ones.

  fold = -1 uses every class of the split (the cross-domain setting: train on
  all source classes, test on the target domain).
  """
  if data.dataset != 'mmtjax_shapes':
    raise ValueError(f"unknown dataset {data.dataset!r}; available: 'mmtjax_shapes'")
  if split not in synthetic.SPLITS:
    raise ValueError(f'unknown split {split!r} of {data.dataset}; choose from {list(synthetic.SPLITS)}')
  tfds.disable_progress_bar()
  builder = embedded.load_builder(data.builder_config, data.data_dir)
  source = builder.as_data_source(split)
  index = episodes.cached_class_index(source, os.fspath(builder.data_dir), split, data.min_pixels)
  return SplitData(source, index, _classes(data, split, training))
