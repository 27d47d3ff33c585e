"""Dataset registry: config.data -> (random-access source, class index, episode classes)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import shutil

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from mmtjax import progress
from mmtjax.data import episodes, synthetic
from mmtjax.data.builders import (
  chest_xray,
  coco20i,
  construction,
  deepglobe,
  embedded,
  folder,
  fss1000,
  isic2018,
  pascal5i,
  raw,
  semantic,
  suim,
)
from mmtjax.errors import UserError, warn

RAW_BUILDERS = {cls.name: cls for cls in (pascal5i.Pascal5i, coco20i.Coco20i, fss1000.Fss1000,
                                          deepglobe.Deepglobe, isic2018.Isic2018,
                                          chest_xray.ChestXray, suim.Suim, folder.Folder,
                                          semantic.Semantic)}
OWN = ('folder', 'semantic')  # a user's own data: each root is its own tfds config
DATASETS = ('mmtjax_shapes', *RAW_BUILDERS)
DATA_FIELDS = ('train_split', 'val_split', 'test_split', 'protocol')


def defaults(dataset: str, fold: int = -1) -> dict:
  """A dataset's own splits and test protocol: what a config gets for the fields it leaves None.
  train_split None marks a test-only (target) dataset."""
  if dataset == 'mmtjax_shapes':
    return dict(train_split='source_train', val_split='source_test',
                test_split='target_test' if fold < 0 else 'source_test', protocol='custom')
  if dataset not in RAW_BUILDERS:
    raise UserError(f'unknown dataset {dataset!r}; available: {list(DATASETS)}')
  return dict(RAW_BUILDERS[dataset].DEFAULTS)


def _known_splits(dataset: str) -> tuple[str, ...]:
  if dataset == 'mmtjax_shapes':
    return tuple(synthetic.SPLITS)
  if dataset in OWN:
    return (*folder.SPLIT_FOLDERS, folder.ALL)
  return RAW_BUILDERS[dataset].SPLITS


def test_data(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data section as the test split sees it: data.test_dataset (default: data.dataset), read
  from data.test_manual_dir (default: data.manual_dir)."""
  out = ml_collections.ConfigDict(data.to_dict())
  out.target_only = False  # the test data is not what the model trained on: every class is a test class
  if data.get('test_dataset'):
    out.dataset = data.test_dataset
    out.manual_dir = data.get('test_manual_dir') or data.get('manual_dir')
    out.target_only = (out.dataset != data.dataset or _abs(out.manual_dir) != _abs(data.get('manual_dir')))
    if out.dataset == 'semantic' and data.get('test_semantic'):  # the target's own layout and class list
      own = dict(data.get('semantic') or {})
      theirs = {**own, **{k: v for k, v in dict(data.test_semantic).items() if v is not None}}
      out.target_only = out.target_only or theirs != own
      out.semantic = theirs
  return out


def _abs(path: str | None) -> str | None:
  return os.path.abspath(os.path.expanduser(path)) if path else None


def resolve(config: ml_collections.ConfigDict, *, training: bool) -> ml_collections.ConfigDict:
  """Fills the data fields a config leaves None (splits, protocol) from the datasets' defaults:
  train/val splits from data.dataset, the test split and protocol from the test dataset.
  Training on a test-only dataset is one line saying how to use it as a target."""
  d = config.data
  for name in (d.dataset, d.get('test_dataset') or d.dataset):
    if name not in DATASETS:
      raise UserError(f'unknown dataset {name!r}; available: {list(DATASETS)}')
  source, target = defaults(d.dataset, d.fold), defaults(test_data(d).dataset, d.fold)
  target_name = test_data(d).dataset
  if target_name != d.dataset and d.get('test_split') is not None and d.test_split not in _known_splits(target_name):
    logging.info('data.test_split %r is not a split of %s: using its own, %r', d.test_split, target_name,
                 target['test_split'])
    d.test_split = None  # A source dataset's test split (e.g. the default config's), not the target's.
  for field in DATA_FIELDS:
    if d.get(field) is None:
      d[field] = (target if field in ('test_split', 'protocol') else source)[field]
  if training and d.train_split is None:
    raise UserError(f'{d.dataset} is a test-only (target) dataset: train on a source dataset and test on it '
                    f'with --config.data.test_dataset={d.dataset} (e.g. configs/patnet.py:target={d.dataset})')
  if d.val_split is None:
    d.val_split = d.train_split
  return config


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


def _embedded_classes(data: ml_collections.ConfigDict, split: str, training: bool) -> tuple[int, ...]:
  domain_classes = synthetic.SPLITS[split].classes
  if data.fold < 0 or synthetic.SPLITS[split].domain != 'source':
    return domain_classes
  novel = synthetic.fold_classes(data.fold)
  return tuple(c for c in domain_classes if (c not in novel) == training)


def _builder_kwargs(name: str, data_dir: str | None, manual_dir: str | None, layout) -> dict:
  kwargs = dict(data_dir=data_dir, file_format='array_record')
  if name in OWN:  # Each of a user's folders (with its layout options) is its own dataset.
    if not manual_dir:
      raise UserError(f'dataset {name}: data.manual_dir must name your data folder (README: "Use your own data")')
    config = (folder.config_name(manual_dir) if name == 'folder' else
              semantic.config_name(manual_dir, semantic.options(layout)))
    kwargs['config'] = tfds.core.BuilderConfig(name=config)
  return kwargs


def load_raw_builder(name: str, data_dir: str | None, manual_dir: str | None,
                     class_list: str | None = None, layout=None) -> raw.RawBuilder:
  """A raw-data builder, built from `manual_dir` on first use (then read from data_dir).
  `class_list`: ISIC's class_id.csv (PATNet's labels), used when building; `layout`: the
  semantic builder's options (data.semantic)."""
  builder = construction.new_builder(RAW_BUILDERS[name], **_builder_kwargs(name, data_dir, manual_dir, layout))
  builder.class_list = class_list
  if name == 'semantic':
    builder.options = semantic.options(layout)
  if builder.is_prepared() and name in OWN and _rebuild_if_changed(builder, manual_dir):
    return load_raw_builder(name, data_dir, manual_dir, class_list, layout)
  if not builder.is_prepared():
    root = builder.find_root(manual_dir)  # Before any work: one line when the files are not there.
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    fingerprint = _fingerprint(root, _tfds_root(builder)) if name in OWN else None
    progress.line(f'building {name} from {root} into {builder.data_dir} (first use; read from there after)')
    with contextlib.redirect_stdout(io.StringIO()):  # tfds' "Downloading and preparing ... Unknown size"
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    raw.write_report(builder)
    if fingerprint is not None:
      _write_json(os.path.join(os.fspath(builder.data_dir), _FINGERPRINT), fingerprint)
  return builder


# A user's folder as it was built: every file's path, size and modification time.
_FINGERPRINT = 'source_files.json'


def _tfds_root(builder) -> str:
  """The TFDS data dir of a builder (<root>/<name>/<config>/<version>): skipped when it lies
  inside the user's folder."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(os.fspath(builder.data_dir)))))


def _fingerprint(root: str, skip: str) -> dict:
  files = {}
  for top, dirs, names in os.walk(root):
    dirs[:] = sorted(d for d in dirs if os.path.abspath(os.path.join(top, d)) != skip)
    for n in sorted(names):
      path = os.path.join(top, n)
      try:
        st = os.stat(path)
      except OSError:
        continue
      files[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns]
  return {'root': root, 'files': files}


def _write_json(path: str, obj) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def _rebuild_if_changed(builder, manual_dir: str) -> bool:
  """A user's folder whose files were added, removed or changed since its build: the build
  (derived from those files alone) is deleted with one warning line, so that it is rebuilt."""
  where = os.fspath(builder.data_dir)
  path = os.path.join(where, _FINGERPRINT)
  if not os.path.exists(path) or not os.path.isdir(os.path.expanduser(manual_dir)):
    return False  # built before fingerprints, or the folder is gone (the build still serves)
  with open(path) as f:
    old = json.load(f)
  root = builder.find_root(manual_dir)
  new = _fingerprint(root, _tfds_root(builder))
  if new == old:
    return False
  before, after = old.get('files', {}), new['files']
  added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
  changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
  first = (added or removed or changed or [root])[0]
  warn(f'{builder.name}: {root} changed since it was built ({len(added)} files added, {len(removed)} removed, '
       f'{len(changed)} changed; first: {first}): rebuilding {where}')
  shutil.rmtree(where)
  return True


def is_prepared(data: ml_collections.ConfigDict) -> bool:
  """Whether data.dataset is built in data.data_dir (the embedded dataset builds from code: always)."""
  if data.dataset == 'mmtjax_shapes':
    return True
  if data.dataset not in RAW_BUILDERS:
    raise UserError(f'unknown dataset {data.dataset!r}; available: {list(DATASETS)}')
  if data.dataset in OWN and not data.get('manual_dir'):
    return False
  kwargs = _builder_kwargs(data.dataset, data.get('data_dir'), data.get('manual_dir'), data.get('semantic'))
  return construction.new_builder(RAW_BUILDERS[data.dataset], **kwargs).is_prepared()


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


def _built_split(builder: raw.RawBuilder, split: str) -> str:
  """`split` if the built dataset has it, else one line: why it is absent (it came out empty, or
  the dataset has other splits). A folder dataset without split folders reads 'all' for any name."""
  built = list(builder.info.splits.keys())
  if split in built:
    return split
  if builder.name in OWN and built == [folder.ALL] and split in folder.SPLIT_FOLDERS:
    return folder.ALL
  if builder.name == 'semantic' and split == 'val' and 'train' in built:
    return 'train'  # no val split: held-out training images validate (_own_split)
  if builder.name == 'semantic' and split == 'test' and 'val' in built:
    return 'val'  # no test split: the val split tests (as PASCAL-5i tests on VOC's val)
  empty = dict(builder.info.metadata.get('empty_splits') or {})
  if split in empty:
    raise UserError(f'split {split!r} of {builder.name} is empty: {empty[split]} (build report: '
                    f'{os.path.join(os.fspath(builder.data_dir), "build_report.json")})')
  raise UserError(f'unknown split {split!r} of {builder.name}; it has {built} (leave data.*_split unset to '
                  f'use its own)')


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
    builder = _process_zero_first(lambda: load_raw_builder(data.dataset, data.data_dir, data.get('manual_dir'),
                                                           data.get('class_list'), data.get('semantic')))
  requested, split = split, split if data.dataset == 'mmtjax_shapes' else _built_split(builder, split)
  source = open_source(builder, split)
  # A user's own data: a class counts where it also survives the resize to the model's size.
  size = data.get('image_size') if data.dataset in OWN else None
  index = _process_zero_first(lambda: episodes.cached_class_index(
      source, os.fspath(builder.data_dir), split, data.min_pixels, size))
  if data.dataset == 'mmtjax_shapes':
    classes, names = _embedded_classes(data, split, training), synthetic.CLASS_NAMES
  else:
    names = tuple(builder.info.metadata.get('class_names') or builder.class_names())
    if data.dataset == 'folder' and not data.get('target_only'):
      return _folder_split(data, builder, source, index, split, requested, training, names)
    if data.dataset == 'semantic' and not data.get('target_only'):
      return _semantic_split(data, builder, source, index, split, requested, training, names)
    classes = builder.split_classes(split, data.fold, training, tuple(sorted(index)))
  return SplitData(source, index, classes, data.dataset, split, os.fspath(builder.data_dir), names)


def _role(requested: str, training: bool) -> str:
  """What a split of a user's own dataset is read for: 'train', 'val' or 'test'."""
  return 'val' if requested == 'val' else 'train' if training or requested == 'train' else 'test'


def _name_list(names: tuple[str, ...], classes) -> str:
  return ', '.join(names[c - 1] if 0 < c <= len(names) else str(c) for c in classes)


def _folder_split(data, builder, source, index, split: str, requested: str, training: bool,
                  names: tuple[str, ...]) -> SplitData:
  """A user's folder dataset as its own source: few-shot by construction.

  Without split folders its classes are split into folds (folder.fold_classes;
  data.fold -1 means fold 0): the fold's classes are tested, the others train,
  and every folder.VAL_EVERY-th image of a training class is validation-only.
  With split folders, a test split sharing classes with train is a warning.
  """
  role = _role(requested, training)
  name_list = functools.partial(_name_list, names)
  where = os.fspath(builder.data_dir)
  if split != folder.ALL:
    if data.fold >= 0:
      raise UserError(f'folder: {data.manual_dir} has split folders, which choose the classes; data.fold must '
                      f'be -1 (drop the split folders to split its classes into folds)')
    classes = tuple(sorted(index))
    if role == 'test' and 'train' in builder.info.splits:
      seen = set(episodes.cached_class_index(open_source(builder, 'train'), where, 'train', data.min_pixels,
                                             data.get('image_size')))
      shared = sorted(seen & set(classes))
      if shared:
        warn(f"folder: the {split} split shares {len(shared)} of its {len(classes)} classes with train "
             f"({name_list(shared)}): these are not unseen classes, so this is not a few-shot evaluation; "
             f"move them out of {split}/ or drop the split folders to split the classes into folds")
    return SplitData(source, index, classes, data.dataset, split, where, names)
  fold = max(data.fold, 0)
  novel = folder.fold_classes(len(names), fold)
  base = tuple(c for c in range(1, len(names) + 1) if c not in novel)
  folds = min(folder.NUM_FOLDS, len(names))
  note = (f'fold {fold} of {folds} over the {len(names)} classes (no split folders): testing {name_list(novel)}; '
          f'training on {name_list(base)}, every {folder.VAL_EVERY}th image of each held out for validation '
          f'(--config.data.fold=0..{folds - 1} picks another fold)')
  if role == 'test':
    classes, kept = novel, {c: index[c] for c in novel if c in index}
  else:
    classes = base
    kept = {c: np.asarray([r for i, r in enumerate(sorted(index[c])) if
                           (i % folder.VAL_EVERY == folder.VAL_EVERY - 1) == (role == 'val')], np.int64)
            for c in base if c in index}
  return SplitData(source, kept, classes, data.dataset, split, where, names, note)


def _test_class_ids(data, names: tuple[str, ...]) -> tuple[int, ...] | None:
  """data.test_classes (names or 1-based ids, a list or a comma-separated string) as ids, or None."""
  given = data.get('test_classes')
  if not given:
    return None
  items = [s.strip() for s in given.split(',')] if isinstance(given, str) else list(given)
  ids = []
  for item in items:
    if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and item not in names):
      c = int(item)
      if not 1 <= c <= len(names):
        raise UserError(f'data.test_classes: class id {c} is not among 1..{len(names)}')
    elif item in names:
      c = names.index(item) + 1
    else:
      raise UserError(f'data.test_classes: {item!r} is not a class of the dataset; it has {list(names)}')
    ids.append(c)
  if len(set(ids)) == len(names):
    raise UserError('data.test_classes names every class: leave at least one class to train on')
  return tuple(sorted(set(ids)))


def _semantic_split(data, builder, source, index, split: str, requested: str, training: bool,
                    names: tuple[str, ...]) -> SplitData:
  """A user's label-index dataset as its own source.

  Tested on another dataset (data.test_dataset): every class trains. Tested on
  itself: its classes are split as PASCAL-5i splits its 20 (data.test_classes,
  else the fold of folder.fold_classes; data.fold -1 means fold 0); training
  and validation episodes take the other classes (a test class's pixels are
  background there, as in PASCAL-5i training), test episodes the held-out
  ones. Without split folders, the test images are those holding a test class
  and training uses only images without any pixel of one; validation is every
  folder.VAL_EVERY-th training image (also when there is no val split).
  """
  role = _role(requested, training)
  name_list = functools.partial(_name_list, names)
  where = os.fspath(builder.data_dir)

  # Validation reads held-out training images when there is no val split of its own.
  holdout = split == folder.ALL or (split == 'train' and 'val' not in builder.info.splits)

  def held_out(kept: dict) -> dict:  # by image (an image holds several classes): train and val apart
    if not holdout:
      return kept
    return {c: np.asarray([r for r in v if (r % folder.VAL_EVERY == folder.VAL_EVERY - 1) == (role == 'val')],
                          np.int64) for c, v in kept.items()}

  if test_data(data).target_only:  # a source for another dataset: all its classes
    if data.fold >= 0 or data.get('test_classes'):
      raise UserError('semantic: data.fold / data.test_classes hold classes out for testing on this dataset, '
                      'but data.test_dataset tests on another; drop one of them')
    classes = tuple(sorted(index))
    return SplitData(source, held_out(dict(index)), classes, data.dataset, split, where, names)
  novel = _test_class_ids(data, names)
  how = 'data.test_classes'
  if novel is None:
    fold, folds = max(data.fold, 0), min(folder.NUM_FOLDS, len(names))
    novel = folder.fold_classes(len(names), fold, 'semantic')
    how = f'fold {fold} of {folds} (--config.data.fold=0..{folds - 1} picks another, or data.test_classes)'
  base = tuple(c for c in range(1, len(names) + 1) if c not in novel)
  note = f'{how}: testing {name_list(novel)}; training on {name_list(base)}'
  if role == 'test':
    kept = {c: index[c] for c in novel if c in index}
    return SplitData(source, kept, novel, data.dataset, split, where, names, note)
  kept = {c: index[c] for c in base if c in index}
  if split == folder.ALL:  # test images (any pixel of a test class) never train
    touched = SplitData(source, index, (), cache_dir=where, name=split).all_index
    test_images = set().union(*(set(touched[c].tolist()) for c in novel if c in touched))
    kept = {c: np.asarray([r for r in v if r not in test_images], np.int64) for c, v in kept.items()}
    note += '; images holding a test class are test-only'
    if not any(len(v) for v in kept.values()):
      raise UserError(f'semantic: every image holds one of the test classes ({name_list(novel)}), so none is '
                      f'left to train on; give split folders or data.test_classes with rarer classes')
  kept = held_out(kept)
  if holdout:
    note += f'; every {folder.VAL_EVERY}th training image held out for validation'
  return SplitData(source, kept, base, data.dataset, split, where, names, note)
