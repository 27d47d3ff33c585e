"""Shared machinery of the builders that read a user's raw download (tfds manual_dir).

Every record holds:
  image    encoded image bytes (the original JPEG/PNG when possible),
  label    PNG bytes of a uint8 map: class ids (0 background, 255 ignore) or,
           when `binary` is True, {0, 1, 255} for the record's single class,
  classes  int32 [n] class ids present, areas int32 [n] their pixel counts,
  binary   bool, name  the source file (for error messages and reports).
Images that cannot be decoded are skipped with a warning and listed in
`<data_dir>/build_report.json`; records without any class are dropped (counted
there too). TensorFlow is not needed: records go to array_record files and are
read back through `builder.as_data_source(split)`.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from mmtjax.data import transforms
from mmtjax.errors import UserError
from mmtjax.labels import IGNORE_LABEL


class RawDataError(UserError):
  """The manual directory is missing, incomplete or not what the builder expects."""



def read_image(path: str) -> np.ndarray:
  """Decoded image; ValueError naming the file when it is corrupt or truncated."""
  with open(path, 'rb') as f:
    return transforms.decode_image(f.read(), path)


def binary_mask(path: str, threshold: int = 128) -> np.ndarray:
  """A grey or colour mask file -> {0, 1} uint8 (any channel >= threshold is foreground)."""
  m = read_image(path)
  if m.ndim == 3:
    m = m[..., :3].max(axis=-1)
  return (m >= threshold).astype(np.uint8)


class Example(NamedTuple):
  key: str
  image: bytes  # encoded
  label: np.ndarray  # [H, W] uint8
  binary: bool = False
  class_id: int = 1  # the class of a binary label


def colour_classes(mask_rgb: np.ndarray, classes: dict[int, int], default: int) -> np.ndarray:
  """Colour-coded mask -> class ids: channels thresholded at 128 give a 3-bit code
  R*4 + G*2 + B, looked up in `classes` (code -> id); other codes become `default`."""
  bits = (mask_rgb[..., :3] >= 128).astype(np.uint8)
  lut = np.full(8, default, np.uint8)
  for code, class_id in classes.items():
    lut[code] = class_id
  return lut[bits[..., 0] * 4 + bits[..., 1] * 2 + bits[..., 2]]


class Item:
  """One raw file (pair) to build: `load()` returns its examples (several for tiled images)."""

  def __init__(self, name: str, load: Callable[[], list[Example]]):
    self.name, self.load = name, load


def require(path: str, builder: str, page: str) -> str:
  """`path`, or RawDataError: a file the layout promises is absent (a half-extracted download)."""
  if not os.path.exists(path):
    raise RawDataError(f'{builder}: missing {path}; the download looks incomplete (half-extracted?); '
                       f'get it from {page}')
  return path


def file_item(key: str, image_path: str, label_fn: Callable[[], np.ndarray], *,
              binary: bool = False, class_id: int = 1,
              required: tuple[str, ...] = (), builder: str = '', page: str = '') -> Item:
  """An example whose image is stored as its original file bytes.

  `required` files (the image, the mask) must exist: a missing one stops the
  build with RawDataError; an existing but undecodable one is skipped.
  """

  def load():
    for path in required:
      require(path, builder, page)
    with open(image_path, 'rb') as f:
      data = f.read()
    image = transforms.decode_image(data, image_path)
    label = label_fn()
    if image.shape[:2] != label.shape:
      raise UserError(f'{image_path}: image {image.shape[:2]} and mask {label.shape} differ in size')
    return [Example(key, data, label, binary, class_id)]

  return Item(image_path, load)


class RawBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of the raw-data builders: manual_dir checks, parallel decoding, build report."""

  VERSION = tfds.core.Version('1.0.0')
  DOWNLOAD_PAGE = ''
  REQUIRED: tuple[str, ...] = ()  # Paths under manual_dir that must exist.
  CLASS_NAMES: tuple[str, ...] = ()  # Class id c is CLASS_NAMES[c - 1].
  SPLITS: tuple[str, ...] = ('test',)
  NUM_WORKERS = 8

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.build_report: dict[str, dict] = {}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=type(self).__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(), dtype=np.object_),
            'label': tfds.features.Tensor(shape=(), dtype=np.object_),
            'classes': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'areas': tfds.features.Tensor(shape=(None,), dtype=np.int32),
            'binary': tfds.features.Tensor(shape=(), dtype=np.bool_),
            'name': tfds.features.Tensor(shape=(), dtype=np.object_),
        }),
    )

  @classmethod
  def check_manual_dir(cls, manual_dir: str | None) -> str:
    """The manual dir, or RawDataError naming the first missing path and the download page."""
    name = cls.name
    if not manual_dir:
      raise RawDataError(f'{name}: the raw data is not built yet and no manual dir was given '
                         f'(--config.data.manual_dir); download it from {cls.DOWNLOAD_PAGE}')
    manual_dir = os.path.expanduser(manual_dir)
    for rel in ('', *cls.REQUIRED):
      path = os.path.join(manual_dir, rel)
      if not os.path.exists(path):
        raise RawDataError(f'{name}: missing {path} (expected layout: see the {name} builder '
                           f'docstring or the README); download from {cls.DOWNLOAD_PAGE}')
    return manual_dir

  def _split_generators(self, dl_manager):
    root = self.check_manual_dir(os.fspath(dl_manager.manual_dir))
    return {split: self._generate_examples(root, split) for split in self.SPLITS}

  def items(self, root: str, split: str) -> Iterator[Item]:
    raise NotImplementedError

  def _generate_examples(self, root: str, split: str):
    report = {'built': 0, 'skipped_corrupt': [], 'dropped_empty': 0, 'notes': []}
    self.build_report[split] = report
    items = list(self.items(root, split))
    if not items:
      raise RawDataError(f'{self.name}: no examples for split {split!r} under {root}; is the '
                         f'download complete? ({self.DOWNLOAD_PAGE})')

    def load(item):
      try:
        return item, item.load(), None
      except RawDataError:
        raise
      except (OSError, ValueError) as e:
        return item, None, e

    with concurrent.futures.ThreadPoolExecutor(self.NUM_WORKERS) as pool:
      for item, examples, error in pool.map(load, items):
        if error is not None:
          logging.warning('%s: skipping %s: %s', self.name, item.name, error)
          report['skipped_corrupt'].append(f'{item.name}: {error}')
          continue
        for ex in examples:
          if ex.binary:
            area = int(np.sum(ex.label == 1))
            classes, areas = ([ex.class_id], [area]) if area else ([], [])
          else:
            ids, counts = np.unique(ex.label[(ex.label != 0) & (ex.label != IGNORE_LABEL)], return_counts=True)
            classes, areas = ids.tolist(), counts.tolist()
          if not classes:
            report['dropped_empty'] += 1
            continue
          report['built'] += 1
          yield ex.key, {'image': ex.image, 'label': transforms.encode_png(ex.label.astype(np.uint8)),
                         'classes': np.asarray(classes, np.int32), 'areas': np.asarray(areas, np.int32),
                         'binary': ex.binary, 'name': item.name}

  def split_classes(self, split: str, fold: int, training: bool, indexed: tuple[int, ...]
                    ) -> tuple[int, ...]:
    """The classes episodes of `split` use: a fold's base (training) or novel classes, or
    with fold -1 every class the split's index holds. Datasets without folds override
    nothing; those with folds (PASCAL-5i, COCO-20i) override this."""
    del split, training
    if fold >= 0:
      raise UserError(f'{self.name} has no folds (data.fold must be -1)')
    return indexed


def fold_split(num_classes: int, novel: tuple[int, ...], fold: int, training: bool) -> tuple[int, ...]:
  """Classes 1..num_classes: all with fold -1, else a fold's base (training) or novel ones."""
  if fold < 0:
    return tuple(range(1, num_classes + 1))
  return tuple(c for c in range(1, num_classes + 1) if (c in novel) != training)


def write_report(builder: RawBuilder) -> None:
  """Writes the build report beside the data and logs a one-line summary per split."""
  if not builder.build_report:
    return
  path = os.path.join(os.fspath(builder.data_dir), 'build_report.json')
  with open(path, 'w') as f:
    json.dump(builder.build_report, f, indent=2)
  for split, r in builder.build_report.items():
    log = logging.warning if r['skipped_corrupt'] else logging.info
    log('%s/%s: built %d examples, skipped %d corrupt, dropped %d without a class '
                    '(report: %s)', builder.name, split, r['built'], len(r['skipped_corrupt']),
                    r['dropped_empty'], path)
