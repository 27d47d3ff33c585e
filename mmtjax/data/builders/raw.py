"""Shared machinery of the builders that read a user's raw download (tfds manual_dir).

Every record holds:
  image    encoded image bytes (the original JPEG/PNG when possible),
  label    PNG bytes of a uint8 map: class ids (0 background, 255 ignore) or,
           when `binary` is True, {0, 1, 255} for the record's single class,
  classes  int32 [n] class ids present, areas int32 [n] their pixel counts,
  binary   bool, name  the source file (for error messages and reports),
  id       the original file name without extension, as the anchors' episode
           lists name it (PASCAL 2007_000033, FSS-1000 <class>/<n>, a
           Deepglobe tile's stem).
Images that cannot be decoded are skipped with a warning and listed in
`<data_dir>/build_report.json`; records without any class are dropped (counted
there too). TensorFlow is not needed: records go to array_record files and are
read back through `builder.as_data_source(split)`.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mmtjax import progress
from mmtjax.data import transforms
from mmtjax.data.builders import dataset
from mmtjax.data.split_data import SplitData
from mmtjax.errors import UserError, warn
from mmtjax.labels import IGNORE_LABEL


class RawDataError(UserError):
  """The manual directory is missing, incomplete or not what the builder expects."""



def read_image(path: str) -> np.ndarray:
  """Decoded image; ValueError naming the file when it is corrupt or truncated."""
  with open(path, 'rb') as f:
    return transforms.decode_image(f.read(), path)


class Mask(NamedTuple):
  """A decoded label map and what was odd about its file (one short phrase each)."""
  values: np.ndarray  # [H, W] uint8
  issues: tuple[str, ...] = ()


def _open_mask(path: str) -> Image.Image:
  with open(path, 'rb') as f:
    data = f.read()
  try:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im
  except Exception as e:  # PIL raises several types for broken files.
    raise UserError(f'cannot decode {path}: {e}') from e


def mask_pixels(path: str) -> np.ndarray:
  """A mask file in any PIL mode -> uint8 [H, W] (grey) or [H, W, 3] (colour), 0 = background.

  '1' (1-bit, e.g. PH2's BMPs) -> 0/255; 'P' (palette) -> the palette's
  colours; 'I;16'/'I'/'F' -> scaled to 0-255 when above 255 (0/1 masks stay
  0/1); 'LA'/'RGBA'/'PA' -> the colour over black, weighted by alpha, or the
  alpha itself when the colour is the same everywhere (a mask drawn only in
  the alpha channel).
  """
  im = _open_mask(path)
  if im.mode == '1':
    return np.asarray(im, np.uint8) * 255
  if im.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
    a = np.asarray(im).astype(np.float64)
    top = float(a.max()) if a.size else 0.0
    if top > 255:
      a *= 255.0 / (65535.0 if top <= 65535 else top)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)
  if im.mode == 'P':
    im = im.convert('RGBA')
  if im.mode == 'PA':
    im = im.convert('RGBA')
  if im.mode in ('LA', 'RGBA'):
    a = np.asarray(im)
    colour, alpha = a[..., :-1], a[..., -1:]
    if colour.size and (colour == colour.reshape(-1, colour.shape[-1])[0]).all():
      return alpha[..., 0].copy()
    out = np.rint(colour.astype(np.float32) * (alpha.astype(np.float32) / 255.0)).astype(np.uint8)
    return out[..., 0] if out.shape[-1] == 1 else out
  if im.mode not in ('L', 'RGB'):
    im = im.convert('RGB')
  return np.asarray(im)


def binary_mask(path: str, threshold: int = 128) -> Mask:
  """A mask file in any mode -> {0, 1}: foreground where the brightest channel is >= threshold
  (PATNet/HSNet: convert('L') then >= 128), or where it is 1 in a mask whose values are only 0
  and 1. Masks with many grey pixels, or whose brightest value is below the threshold, are
  noted (they are probably not binary masks)."""
  m = mask_pixels(path)
  if m.ndim == 3:
    m = m.max(axis=-1)
  top = int(m.max()) if m.size else 0
  if top <= 1:
    return Mask((m == 1).astype(np.uint8))
  issues = []
  if top < threshold:
    issues.append(f'brightest value {top} < {threshold}: empty after thresholding (a class-id map?)')
  elif np.mean((m > 32) & (m < 224)) > 0.05 and len(np.unique(m)) > 2:  # two levels: a clean mask
    issues.append('more than 5% of pixels are neither near 0 nor near 255 (thresholded at 128)')
  return Mask((m >= threshold).astype(np.uint8), tuple(issues))


def class_map(path: str, num_classes: int) -> Mask:
  """A class-id mask (8-bit grey like SegmentationClassAug, or palette like VOC's
  SegmentationClass, whose indices are the ids) -> ids 0..num_classes and 255; other
  values become 255 (ignored) and are noted."""
  im = _open_mask(path)
  if im.mode not in ('L', 'P'):
    raise UserError(f'{path}: expected a class-id mask (8-bit grey or palette PNG), got mode {im.mode}')
  m = np.asarray(im).astype(np.uint8)
  bad = (m > num_classes) & (m != IGNORE_LABEL)
  if bad.any():
    m = np.where(bad, IGNORE_LABEL, m).astype(np.uint8)
    return Mask(m, (f'values outside 0-{num_classes} and 255 (set to 255, ignored)',))
  return Mask(m)


class Example(NamedTuple):
  key: str
  image: bytes  # encoded
  label: np.ndarray  # [H, W] uint8
  binary: bool = False
  class_id: int = 1  # the class of a binary label
  issues: tuple[str, ...] = ()  # Mask.issues of its label
  id: str = ''  # The original file name without extension (episode lists); '' = key


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


def file_item(key: str, image_path: str, label_fn: Callable[[], Mask], *,
              binary: bool = False, class_id: int = 1, id: str = '',  # noqa: A002
              required: tuple[str, ...] = (), builder: str = '', page: str = '') -> Item:
  """An example whose image is stored as its original file bytes.

  `required` files (the image, the mask) must exist: a missing one stops the
  build with RawDataError; an existing but undecodable one (a zero-byte or
  truncated file) and a mask of another size than its image are skipped and
  listed in the build report. (A mask of another size usually belongs to
  another image, so it is not resized.) The exception: a mask at another
  scale of the same picture (the same aspect ratio, to a pixel: Weizmann
  horses' photos and masks), whose image is resized to the mask (bicubic,
  stored as PNG) and counted in the build report.
  """

  def load():
    for path in required:
      require(path, builder, page)
    with open(image_path, 'rb') as f:
      data = f.read()
    image = transforms.decode_image(data, image_path)
    mask = label_fn()
    issues = mask.issues
    if image.shape[:2] != mask.values.shape:
      if not same_aspect(image.shape[:2], mask.values.shape):
        raise UserError(f'{image_path}: image {image.shape[:2]} and mask {mask.values.shape} differ in size')
      h, w = mask.values.shape
      data = transforms.encode_png(np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC)))
      issues = (*issues, 'at another scale than their image (same aspect ratio): the image was resized to the mask')
    return [Example(key, data, mask.values, binary, class_id, issues, id)]

  return Item(image_path, load)


def same_aspect(image_hw: tuple[int, int], mask_hw: tuple[int, int]) -> bool:
  """Whether the image, scaled to the mask's width and to its height, lands within a pixel of
  the mask's size: the same picture at another scale."""
  (hi, wi), (hm, wm) = image_hw, mask_hw
  return abs(hi * wm / wi - hm) <= 1.0 and abs(wi * hm / hi - wm) <= 1.0


def _missing(root: str, rel: tuple[str, ...]) -> list[str]:
  return [r for r in rel if not os.path.exists(os.path.join(root, r))]


class RawBuilder(dataset.Dataset, tfds.core.GeneratorBasedBuilder):
  """Base of the raw-data builders: finding the data root, parallel decoding, build report.

  A builder names the paths a data root holds (LAYOUTS: one tuple per accepted
  layout, e.g. the raw challenge files or PATNet's preprocessed tree). The
  user's manual_dir may be that root or a folder up to SEARCH_DEPTH levels
  above it (an archive's top-level folder, VOCdevkit/VOC2012, ...). What is
  true of the dataset (splits, protocols, names) it declares as a
  dataset.Dataset.
  """

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.1.0': 'Masks in any image mode; data root found below manual_dir.'}
  DOWNLOAD_PAGE = ''
  LAYOUTS: tuple[tuple[str, ...], ...] = ((),)  # Paths under the root, one tuple per layout.
  CLASS_NAMES: tuple[str, ...] = ()  # Class id c is CLASS_NAMES[c - 1].
  NUM_WORKERS = 8
  SEARCH_DEPTH = 3
  class_list: str | None = None  # A class list file the builder reads (ISIC: PATNet's class_id.csv).

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.build_report: dict[str, dict] = {}
    self.layout = 0  # Index into LAYOUTS of the layout found (set by find_root).
    self.manual_top: str | None = None  # The manual dir find_root searched (absolute).

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
            'id': tfds.features.Tensor(shape=(), dtype=np.object_),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  # Finding the data root --------------------------------------------------------------------

  def is_root(self, path: str) -> int | None:
    """The index of the first layout whose paths all exist under `path`, else None."""
    for i, rel in enumerate(self.LAYOUTS):
      if rel and not _missing(path, rel):
        return i
    return None

  def find_root(self, manual_dir: str | None) -> str:
    """The data root at or below manual_dir (breadth first, SEARCH_DEPTH levels), logged; or
    RawDataError listing what was looked for and the nearest match seen."""
    name = self.name
    if not manual_dir:
      raise RawDataError(f'{name}: the raw data is not built yet and no manual dir was given '
                         f'(--config.data.manual_dir); download it from {self.DOWNLOAD_PAGE}')
    top = self.manual_top = os.path.abspath(os.path.expanduser(manual_dir))
    if not os.path.isdir(top):
      raise RawDataError(f'{name}: missing {top} (the manual dir: the folder you unpacked the download '
                         f'into); download from {self.DOWNLOAD_PAGE}')
    level, seen = [top], []
    for depth in range(self.SEARCH_DEPTH + 1):
      for path in level:
        layout = self.is_root(path)
        if layout is not None:
          self.layout = layout
          if path != top:
            logging.info('%s: using the data root %s (found below %s)', name, path, top)
          return path
        seen.append(path)
      if depth == self.SEARCH_DEPTH:
        break
      level = [os.path.join(p, d) for p in level for d in _subdirs(p)][:2000]
    raise RawDataError(self.no_root_message(top, seen))

  def no_root_message(self, top: str, seen: list[str]) -> str:
    """What find_root says when no folder at or below `top` (`seen`: the folders looked at) is a root."""
    wanted = ' or '.join('{' + ', '.join(rel) + '}' for rel in self.LAYOUTS if rel)
    best = max(((len(rel) - len(_missing(p, rel)), p, rel) for p in seen for rel in self.LAYOUTS if rel),
               default=(0, None, ()))
    hint = ''
    if best[0]:
      missing = _missing(best[1], best[2])
      hint = (f'; nearest match: {best[1]} has {", ".join(r for r in best[2] if r not in missing)}'
              f' but lacks {", ".join(missing)}')
    return (f'{self.name}: no data root at or up to {self.SEARCH_DEPTH} levels below {top}: looked for '
            f'a folder holding {wanted}{hint} (layout: the {self.name} builder docstring); download '
            f'from {self.DOWNLOAD_PAGE}')

  # What the library asks ----------------------------------------------------------------------

  @classmethod
  def layouts_text(cls) -> str:
    """The layouts it finds, for the list command."""
    return ' or '.join('{' + ', '.join(rel) + '}' for rel in cls.LAYOUTS if rel)

  @classmethod
  def describe(cls) -> str:
    return f'{cls.DOWNLOAD_PAGE}; finds {cls.layouts_text() or "-"}'

  def configure(self, class_list: str | None, layout) -> None:
    """The config's options read when building: `class_list` (ISIC: PATNet's class_id.csv) and
    `layout` (the semantic builder's data.semantic)."""
    del layout
    self.class_list = class_list

  def built_split(self, split: str) -> str | None:
    return split if split in self.info.splits else None

  def names(self) -> tuple[str, ...]:
    return tuple(self.info.metadata.get('class_names') or self.class_names())

  def split_data(self, data, source, index, split, requested, training, tested_elsewhere):
    del requested, tested_elsewhere
    classes = self.split_classes(split, data.fold, training, tuple(sorted(index)))
    return SplitData(source, index, classes, self.name, split, os.fspath(self.data_dir), self.names(),
                     builder=self)

  # Building ---------------------------------------------------------------------------------

  def splits(self, root: str) -> tuple[str, ...]:
    """The split names a root provides (fixed for the benchmarks)."""
    del root
    return self.SPLITS

  def items(self, root: str, split: str) -> Iterator[Item]:
    raise NotImplementedError

  def why_empty(self, root: str, split: str) -> str:
    """Why `split` holds no file under `root` (overridden where a builder can say more)."""
    return f'no image of split {split!r} found under {root}'

  def _split_generators(self, dl_manager):
    root = self.find_root(os.fspath(dl_manager.manual_dir))
    self.info.metadata['root'] = root
    self.info.metadata['class_names'] = list(self.class_names(root))
    generators, empty = {}, {}
    for split in self.splits(root):
      self.build_report[split] = {'built': 0, 'skipped_corrupt': [], 'dropped_empty': 0, 'notes': [],
                                  'root': root}
      items = list(self.items(root, split))
      if items:
        generators[split] = self._generate_examples(items, split)
      else:
        empty[split] = self.why_empty(root, split)
        self.build_report[split]['notes'].append(f'empty split: {empty[split]}')
    self.info.metadata['empty_splits'] = empty
    if not generators:
      raise RawDataError(f'{self.name}: nothing to build: ' + '; '.join(f'{s}: {r}' for s, r in empty.items()))
    return generators

  def class_names(self, root: str | None = None) -> tuple[str, ...]:
    """Names of class ids 1..C (a built dataset keeps them in its metadata)."""
    del root
    return self.CLASS_NAMES

  def _generate_examples(self, items: list[Item], split: str):
    report = self.build_report[split]
    issues: dict[str, list] = {}
    per_class: dict[int, int] = {}
    pixels: dict[int, int] = {}
    skipped = report.setdefault('skipped', {})  # kind -> [count, first file]: one console line each

    def load(item):
      try:
        return item, item.load(), None
      except RawDataError:
        raise
      except (OSError, ValueError) as e:
        return item, None, e

    meter = progress.Meter(f'building {self.name}/{split}', len(items), 'files')  # silent for short builds
    with concurrent.futures.ThreadPoolExecutor(self.NUM_WORKERS) as pool:
      for done, (item, examples, error) in enumerate(pool.map(load, items), 1):
        meter.update(done)
        if error is not None:
          logging.warning('%s: skipping %s: %s', self.name, item.name, error)
          report['skipped_corrupt'].append(f'{item.name}: {error}')
          kind = ('masks of another size than their image' if 'differ in size' in str(error) else
                  'colour masks without a palette in the class list' if 'has no palette' in str(error) else
                  'unreadable files')
          skipped.setdefault(kind, [0, item.name])[0] += 1
          continue
        for ex in examples:
          for issue in ex.issues:
            issues.setdefault(issue, [0, item.name])[0] += 1
          if ex.binary:
            area = int(np.sum(ex.label == 1))
            classes, areas = ([ex.class_id], [area]) if area else ([], [])
          else:
            ids, counts = np.unique(ex.label[(ex.label != 0) & (ex.label != IGNORE_LABEL)], return_counts=True)
            classes, areas = ids.tolist(), counts.tolist()
          if not classes:
            report['dropped_empty'] += 1
            skipped.setdefault('masks without foreground (dropped)', [0, item.name])[0] += 1
            continue
          report['built'] += 1
          for c, a in zip(classes, areas):
            per_class[c] = per_class.get(c, 0) + 1
            pixels[c] = pixels.get(c, 0) + int(a)
          yield ex.key, {'image': ex.image, 'label': transforms.encode_png(ex.label.astype(np.uint8)),
                         'classes': np.asarray(classes, np.int32), 'areas': np.asarray(areas, np.int32),
                         'binary': ex.binary, 'name': item.name, 'id': ex.id or ex.key}
    names = self.info.metadata.get('class_names') or []

    def name(c):
      return names[c - 1] if 0 < c <= len(names) else str(c)
    report['per_class'] = {name(c): n for c, n in sorted(per_class.items())}  # images holding the class
    report['per_class_pixels'] = {name(c): n for c, n in sorted(pixels.items())}
    report['notes'] += [f'{n} masks: {issue} (first: {first})' for issue, (n, first) in issues.items()]
    if not report['built']:
      first = report['skipped_corrupt'][:1] or ['-']
      raise RawDataError(
          f'{self.name}/{split}: none of {len(items)} files gave an example: {len(report["skipped_corrupt"])} '
          f'unreadable (first: {first[0]}), {report["dropped_empty"]} masks without foreground'
          + (f'; {report["notes"][0]}' if report['notes'] else ''))

  def split_classes(self, split: str, fold: int, training: bool, indexed: tuple[int, ...]
                    ) -> tuple[int, ...]:
    """The classes episodes of `split` use: a fold's base (training) or novel classes, or
    with fold -1 every class the split's index holds. Datasets without folds override
    nothing; those with folds (PASCAL-5i, COCO-20i) override this."""
    del split, training
    if fold >= 0:
      raise UserError(f'{self.name} has no folds (data.fold must be -1)')
    return indexed


def _subdirs(path: str) -> list[str]:
  try:
    return sorted(d for d in os.listdir(path) if not d.startswith('.') and os.path.isdir(os.path.join(path, d)))
  except OSError:
    return []


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
    for kind, (n, first) in r.get('skipped', {}).items():
      warn(f'{builder.name}/{split}: skipped {n} {kind} (first: {first}); build report: {path}')
    for note in r['notes']:
      if any(w in note for w in ('skipped', 'unknown label value', 'not in the palette', 'image was resized')):
        # e.g. the folder builder's images without a mask file, a class list shorter than the masks
        warn(f'{builder.name}/{split}: {note}; build report: {path}')
    log = logging.warning if r['skipped_corrupt'] else logging.info
    per_class = ', '.join(f'{k} {v}' for k, v in r.get('per_class', {}).items())
    log('%s/%s: built %d examples (per class: %s), skipped %d corrupt, dropped %d without a class%s (report: %s)',
        builder.name, split, r['built'], per_class or '-', len(r['skipped_corrupt']), r['dropped_empty'],
        ''.join(f'; {n}' for n in r['notes']), path)
