"""A split as episodes read it: its records, its class index and the classes its episodes use.

The dataset's builder makes it (builder.split_data); the episode sampler, the
anchors' lists, the loader and the reports read it.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from mmtjax.data import episodes
from mmtjax.errors import UserError


@dataclasses.dataclass
class SplitData:
  source: object  # tfds data source: len() and [i] -> dict of numpy
  index: dict[int, np.ndarray]  # class -> records with >= data.min_pixels of it
  classes: tuple[int, ...]  # the classes its episodes use
  dataset: str = ''
  name: str = ''  # the split
  cache_dir: str | None = None  # where per-split caches live (beside the data)
  class_names: tuple[str, ...] = ()  # of ids 1..C
  classes_note: str = ''  # which classes trained and which are tested, where the split chose them
  builder: object = None  # the dataset's built builder: what is declared of the dataset

  @property
  def has_ids(self) -> bool:
    """Whether its records carry their file names (episode lists then show them)."""
    return bool(self.cache_dir) and getattr(self.builder, 'RECORD_IDS', True)

  def class_name(self, c: int) -> str:
    return self.class_names[c - 1] if 0 < c <= len(self.class_names) else str(c)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @functools.cached_property
  def all_index(self) -> dict[int, np.ndarray]:
    """class -> every record holding any pixel of it (the anchors' lists filter nothing)."""
    if self.cache_dir is None:
      return self.index
    return episodes.cached_class_index(self.source, self.cache_dir, self.name, 1)

  def ids(self) -> list[str]:
    """The records' ids (original file names without extension)."""
    return episodes.cached_ids(self.source, self.cache_dir, self.name)


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
