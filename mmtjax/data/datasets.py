"""The dataset registry and what every dataset shares: config.data -> a split's records, class index
and episode classes (SplitData).

A dataset is one object, its builder class (builders/dataset.py): it declares
its splits, classes, folds, protocols, anchors' conventions, display name and
suites; this module asks it, and never tests a dataset's name. The registry is
one list; a new dataset is a builder passed to `register` (tests/test_datasets.py
registers one of its own).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil

import jax
import ml_collections
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from mmtjax import progress
from mmtjax.data import episodes, protocols
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
from mmtjax.data.split_data import ReadChecked, SplitData, open_source  # noqa: F401 - where users find them
from mmtjax.errors import UserError, warn

_REGISTRY: dict[str, type] = {}
DATA_FIELDS = ('train_split', 'val_split', 'test_split', 'protocol')


def register(dataset: type) -> type:
  """Adds a dataset (a builder class declaring dataset.Dataset) under its tfds name, replacing one
  of the same name. Registration order is the order of names() and of a suite's datasets."""
  _REGISTRY[dataset.name] = dataset
  return dataset


def unregister(name: str) -> None:
  """Removes a registered dataset (a test's own, when it is done)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> type:
  """The dataset registered as `name` (its builder class); one line naming the others."""
  if name not in _REGISTRY:
    raise UserError(f'unknown dataset {name!r}; available: {list(_REGISTRY)}')
  return _REGISTRY[name]


def suites() -> dict[str, tuple[str, ...]]:
  """Named sets of test datasets (evaluate.py --suite), as the datasets declare them."""
  out: dict[str, tuple[str, ...]] = {}
  for name, dataset in _REGISTRY.items():
    for suite in dataset.SUITES:
      out[suite] = (*out.get(suite, ()), name)
  return out


def display_name(name: str) -> str:
  """A dataset's name in report tables (PASCAL-5i); a name not registered is shown as it is."""
  return _REGISTRY[name].display_name() if name in _REGISTRY else name


def default_name() -> str:
  """The library's default dataset (the embedded one)."""
  return next(n for n, d in _REGISTRY.items() if d.DEFAULT)


for _dataset in (embedded.MmtjaxShapes, pascal5i.Pascal5i, coco20i.Coco20i, deepglobe.Deepglobe, isic2018.Isic2018,
                 chest_xray.ChestXray, fss1000.Fss1000, suim.Suim, folder.Folder, semantic.Semantic):
  register(_dataset)


def defaults(dataset: str, fold: int = -1) -> dict:
  """A dataset's own splits and test protocol: what a config gets for the fields it leaves None.
  train_split None marks a test-only (target) dataset."""
  return get(dataset).defaults(fold)


def test_protocol(data: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict) -> protocols.Protocol:
  """The protocol of config.data.protocol for config.data.dataset: the dataset's own declaration
  (its builder's PROTOCOLS), or 'custom' from the config."""
  name, dataset = data.get('protocol') or 'custom', data.dataset
  if name == 'custom':
    return protocols.Protocol('custom', eval_cfg.num_episodes, eval_cfg.seed, data.image_size, 'square')
  declared = get(dataset)
  if name not in known_protocols(data):
    raise UserError(f'data.protocol must be one of {known_protocols(data)}, got {name!r}')
  if name == 'pfenet' and name not in declared.PROTOCOLS:
    having = sorted(n for n in names() if name in get(n).PROTOCOLS)
    raise UserError(f"protocol 'pfenet' is defined for {having}, not {dataset!r}")
  return declared.protocol(name)


def known_protocols(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The protocol names a config may give: the published ones, 'custom', and any protocol of its
  own that its dataset or test dataset declares."""
  own = [p for n in (data.get('dataset'), data.get('test_dataset')) if n in names()
         for p in get(n).PROTOCOLS]
  return tuple(dict.fromkeys((*protocols.PROTOCOLS, *own)))


def test_data(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data section as the test split sees it: data.test_dataset (default: data.dataset), read
  from data.test_manual_dir (default: data.manual_dir)."""
  out = ml_collections.ConfigDict(data.to_dict())
  out.target_only = False  # the test data is not what the model trained on: every class is a test class
  if data.get('test_dataset'):
    out.dataset = data.test_dataset
    out.manual_dir = data.get('test_manual_dir') or data.get('manual_dir')
    out.target_only = (out.dataset != data.dataset or _abs(out.manual_dir) != _abs(data.get('manual_dir')))
    target = _REGISTRY.get(out.dataset)
    if target is not None and target.target_options(data, out):  # the target's own layout and class list
      out.target_only = True
  return out


def _abs(path: str | None) -> str | None:
  return os.path.abspath(os.path.expanduser(path)) if path else None


def resolve(config: ml_collections.ConfigDict, *, training: bool) -> ml_collections.ConfigDict:
  """Fills the data fields a config leaves None (splits, protocol) from the datasets' defaults:
  train/val splits from data.dataset, the test split and protocol from the test dataset.
  Training on a test-only dataset is one line saying how to use it as a target."""
  d = config.data
  for name in (d.dataset, d.get('test_dataset') or d.dataset):
    get(name)
  source, target = defaults(d.dataset, d.fold), defaults(test_data(d).dataset, d.fold)
  target_name = test_data(d).dataset
  if target_name != d.dataset and d.get('test_split') is not None and d.test_split not in get(target_name).SPLITS:
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


def _builder_kwargs(name: str, data_dir: str | None, manual_dir: str | None, layout) -> dict:
  kwargs = dict(data_dir=data_dir, file_format='array_record')
  dataset = get(name)
  if dataset.OWN_DATA:  # Each of a user's folders (with its layout options) is its own dataset.
    if not manual_dir:
      raise UserError(f'dataset {name}: data.manual_dir must name your data folder (README: "Use your own data")')
    kwargs['config'] = tfds.core.BuilderConfig(name=dataset.config_name(manual_dir, layout))
  return kwargs


def load_raw_builder(name: str, data_dir: str | None, manual_dir: str | None,
                     class_list: str | None = None, layout=None) -> raw.RawBuilder:
  """A raw-data builder, built from `manual_dir` on first use (then read from data_dir).
  `class_list`: ISIC's class_id.csv (PATNet's labels), used when building; `layout`: the
  semantic builder's options (data.semantic)."""
  builder = construction.new_builder(get(name), **_builder_kwargs(name, data_dir, manual_dir, layout))
  builder.configure(class_list, layout)
  if builder.is_prepared() and builder.OWN_DATA and _rebuild_if_changed(builder, manual_dir):
    return load_raw_builder(name, data_dir, manual_dir, class_list, layout)
  if not builder.is_prepared():
    root = builder.find_root(manual_dir)  # Before any work: one line when the files are not there.
    manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
    fingerprint = _fingerprint(root, _tfds_root(builder)) if builder.OWN_DATA else None
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
  dataset = get(data.dataset)
  if dataset.GENERATED:
    return True
  if dataset.OWN_DATA and not data.get('manual_dir'):
    return False
  kwargs = _builder_kwargs(data.dataset, data.get('data_dir'), data.get('manual_dir'), data.get('semantic'))
  return construction.new_builder(dataset, **kwargs).is_prepared()


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


def _built_split(builder, split: str) -> str:
  """The built split serving `split` (the dataset says which: builder.built_split), else one line:
  why it is absent (it came out empty, or the dataset has other splits)."""
  served = builder.built_split(split)
  if served is not None:
    return served
  built = list(builder.info.splits.keys())
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
  dataset = get(data.dataset)
  tfds.disable_progress_bar()
  dataset.check_split(split)
  if dataset.GENERATED:
    builder = _process_zero_first(lambda: dataset.generate(data))
  else:
    builder = _process_zero_first(lambda: load_raw_builder(data.dataset, data.data_dir, data.get('manual_dir'),
                                                           data.get('class_list'), data.get('semantic')))
  requested, split = split, _built_split(builder, split)
  source = open_source(builder, split)
  # A user's own data: a class counts where it also survives the resize to the model's size.
  size = data.get('image_size') if dataset.OWN_DATA else None
  index = _process_zero_first(lambda: episodes.cached_class_index(
      source, os.fspath(builder.data_dir), split, data.min_pixels, size))
  return builder.split_data(data, source, index, split, requested, training, test_data(data).target_only)


