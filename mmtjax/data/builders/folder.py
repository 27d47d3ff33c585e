"""A user's own images and masks, one folder per class, for training or as a target domain.

Layout (the root is data.manual_dir itself):
  <root>/<class>/<name>.<jpg|jpeg|png|bmp|tif|tiff|webp>   an image
  <root>/<class>/<name>_mask.png                            its mask, beside it
or, to give the splits yourself, the same under split folders:
  <root>/train/<class>/...   <root>/val/<class>/...   <root>/test/<class>/...
The mask is a binary mask of the folder's class, in any image mode (1-bit,
grey 0/255 or 0/1, palette, RGB, RGBA: raw.binary_mask), of the image's size;
`<name>_mask.<any image extension, or .gif>` is accepted too (a JPEG mask is thresholded at 128). Classes are the folder
names, sorted, ids 1..C, the same id for a class in every split. Without split
folders the one split is 'images', and every split name (train, val, test)
reads it; when the root is also the training data, its classes are split into
folds as PASCAL-5i splits its 20 (fold_classes): the fold's classes are the
test classes, the others train, and every VAL_EVERY-th image of each training
class is held out for validation (datasets.load_split). As a target of a model
trained on other data, every class is a test class. Images without a mask, unreadable files and masks of another size are
skipped and listed in the build report; an empty mask is dropped (counted).

Each root is its own dataset (tfds config `<folder name>_<hash of the path>`):
files added, removed or changed after the build are noticed and the folder is
rebuilt (datasets.load_raw_builder).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re

import numpy as np

from mmtjax.data import episodes
from mmtjax.data.builders import raw
from mmtjax.data.split_data import SplitData, open_source
from mmtjax.errors import UserError, warn

NUM_FOLDS = 4  # as PASCAL-5i; fewer when there are fewer classes (one class per fold)
VAL_EVERY = 4  # without split folders: every 4th image of a training class is validation-only
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
MASK_EXTENSIONS = (*IMAGE_EXTENSIONS, '.gif')  # DRIVE ships its vessel masks as GIF
SPLIT_FOLDERS = ('train', 'val', 'test')
ALL = 'images'  # The one split of a root without split folders ('all' is reserved by tfds).


def config_name(root: str, extra: bytes = b'') -> str:
  """The tfds config name of a root: its folder name and a hash of its absolute path (and of
  `extra`, what else makes it another dataset: the semantic builder's options and class list)."""
  root = os.path.abspath(os.path.expanduser(root))
  slug = re.sub(r'[^a-z0-9]+', '_', os.path.basename(root).lower()).strip('_') or 'root'
  h = hashlib.sha1(root.encode())
  h.update(extra)
  return f'{slug[:40]}_{h.hexdigest()[:8]}'


def fold_classes(num_classes: int, fold: int, dataset: str = 'folder') -> tuple[int, ...]:
  """The test classes of `fold` among ids 1..num_classes: contiguous blocks, as PASCAL-5i's
  fold i = 5i+1..5i+5, over min(NUM_FOLDS, num_classes) folds."""
  if num_classes < 2:
    hint = ('add class folders (2 or more), or give train/ val/ test/ split folders' if dataset == 'folder' else
            'a dataset of one class cannot hold classes out; test it as a target (data.test_dataset)')
    raise UserError(f'{dataset}: {num_classes} class(es) cannot be split into seen and unseen classes: {hint}')
  folds = min(NUM_FOLDS, num_classes)
  if not 0 <= fold < folds:
    raise UserError(f'{dataset}: {num_classes} classes make {folds} folds: data.fold must be 0..{folds - 1}')
  return tuple(c for c in range(1, num_classes + 1) if (c - 1) * folds // num_classes == fold)


def _images_and_masks(folder: str) -> tuple[list[str], dict[str, str]]:
  files = sorted(f for f in os.listdir(folder) if f.lower().endswith(MASK_EXTENSIONS))
  masks = {os.path.splitext(f)[0][:-len('_mask')]: f for f in files if os.path.splitext(f)[0].endswith('_mask')}
  images = [f for f in files if not os.path.splitext(f)[0].endswith('_mask') and f.lower().endswith(IMAGE_EXTENSIONS)]
  return images, masks


def role(requested: str, training: bool) -> str:
  """What a split of a user's own dataset is read for: 'train', 'val' or 'test'."""
  return 'val' if requested == 'val' else 'train' if training or requested == 'train' else 'test'


def name_list(names: tuple[str, ...], classes) -> str:
  return ', '.join(names[c - 1] if 0 < c <= len(names) else str(c) for c in classes)


def own_split(built, split: str) -> str | None:
  """The built split of a user's root serving `split`: itself, or for a root without split
  folders its one split (ALL) for every split name."""
  if split in built:
    return split
  return ALL if list(built) == [ALL] and split in SPLIT_FOLDERS else None


class Folder(raw.RawBuilder):
  """A user's own data (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'your own files (README: "Use your own data")'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  SEARCH_DEPTH = 0
  SPLITS = (*SPLIT_FOLDERS, ALL)
  DEFAULTS = dict(train_split='train', val_split='val', test_split='test', protocol='custom')
  OWN_DATA = True

  @classmethod
  def config_name(cls, manual_dir, layout):
    del layout
    return config_name(manual_dir)

  @classmethod
  def layouts_text(cls):
    return '{CLASS/x.jpg, CLASS/x_mask.png} or the same under {train, val, test}/'

  def built_split(self, split):
    return own_split(self.info.splits, split)

  def split_data(self, data, source, index, split, requested, training, tested_elsewhere):
    """A user's folder as a target (data.target_only): every class a test class. As its own
    source it is few-shot by construction: without split folders its classes are split into
    folds (fold_classes; data.fold -1 means fold 0), the fold's classes are tested, the others
    train, and every VAL_EVERY-th image of a training class is validation-only. With split
    folders, a test split sharing classes with train is a warning."""
    if data.get('target_only'):
      return super().split_data(data, source, index, split, requested, training, tested_elsewhere)
    purpose = role(requested, training)
    names = self.names()
    listed = functools.partial(name_list, names)
    where = os.fspath(self.data_dir)
    if split != ALL:
      if data.fold >= 0:
        raise UserError(f'folder: {data.manual_dir} has split folders, which choose the classes; data.fold must '
                        f'be -1 (drop the split folders to split its classes into folds)')
      classes = tuple(sorted(index))
      if purpose == 'test' and 'train' in self.info.splits:
        seen = set(episodes.cached_class_index(open_source(self, 'train'), where, 'train', data.min_pixels,
                                               data.get('image_size')))
        shared = sorted(seen & set(classes))
        if shared:
          warn(f"folder: the {split} split shares {len(shared)} of its {len(classes)} classes with train "
               f"({listed(shared)}): these are not unseen classes, so this is not a few-shot evaluation; "
               f"move them out of {split}/ or drop the split folders to split the classes into folds")
      return SplitData(source, index, classes, self.name, split, where, names, builder=self)
    fold = max(data.fold, 0)
    novel = fold_classes(len(names), fold)
    base = tuple(c for c in range(1, len(names) + 1) if c not in novel)
    folds = min(NUM_FOLDS, len(names))
    note = (f'fold {fold} of {folds} over the {len(names)} classes (no split folders): testing {listed(novel)}; '
            f'training on {listed(base)}, every {VAL_EVERY}th image of each held out for validation '
            f'(--config.data.fold=0..{folds - 1} picks another fold)')
    if purpose == 'test':
      classes, kept = novel, {c: index[c] for c in novel if c in index}
    else:
      classes = base
      kept = {c: np.asarray([r for i, r in enumerate(sorted(index[c])) if
                             (i % VAL_EVERY == VAL_EVERY - 1) == (purpose == 'val')], np.int64)
              for c in base if c in index}
    return SplitData(source, kept, classes, self.name, split, where, names, note, builder=self)

  def _split_dirs(self, root: str) -> dict[str, str]:
    found = {s: os.path.join(root, s) for s in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, s))}
    return found or {ALL: root}

  def splits(self, root):
    return tuple(self._split_dirs(root))

  def class_names(self, root=None):
    if root is None:
      return tuple(self.info.metadata.get('class_names', ()))
    return tuple(sorted({c for d in self._split_dirs(root).values() for c in raw._subdirs(d)}))

  def is_root(self, path):
    return 0 if any(raw._subdirs(d) for d in self._split_dirs(path).values()) else None

  def find_root(self, manual_dir):
    if manual_dir and os.path.isdir(os.path.expanduser(manual_dir)):
      root = os.path.abspath(os.path.expanduser(manual_dir))
      if self.is_root(root) is None:
        raise raw.RawDataError(f'folder: {root} holds no class folders; expected <root>/<class>/<name>.jpg with '
                               f'<name>_mask.png beside it (README: "Use your own data")')
      return root
    raise raw.RawDataError(f'folder: data.manual_dir must name your data folder (got {manual_dir!r}); '
                           f'layout: <root>/<class>/<name>.jpg with <name>_mask.png beside it')

  def items(self, root, split):
    ids = {name: i + 1 for i, name in enumerate(self.class_names(root))}
    base = self._split_dirs(root)[split]
    without_mask = []
    for cls in raw._subdirs(base):
      folder = os.path.join(base, cls)
      images, masks = _images_and_masks(folder)
      for image in images:
        stem = os.path.splitext(image)[0]
        if stem not in masks:
          without_mask.append(os.path.join(folder, image))
          continue
        path = os.path.join(folder, image)
        yield raw.file_item(f'{cls}/{stem}', path, functools.partial(raw.binary_mask, os.path.join(folder, masks[stem])),
                            binary=True, class_id=ids[cls], required=(path,), builder=self.name,
                            page=self.DOWNLOAD_PAGE)
    if without_mask:
      self.build_report[split]['notes'].append(
          f'{len(without_mask)} images without a <name>_mask file were skipped (first: {without_mask[0]})')

  def why_empty(self, root, split):
    return (f'no image with a <name>_mask file in the class folders of {self._split_dirs(root)[split]}')
