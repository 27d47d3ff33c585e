"""The test episodes of HSNet and PATNet, drawn as their code draws them (protocol 'hsnet').

Both test scripts seed numpy's global generator once (utils.fix_randseed(0);
another seed s here gives what their scripts draw with fix_randseed(s))
and read the episodes in index order (a DataLoader without workers or
shuffling; the transforms draw nothing), so a legacy
`numpy.random.RandomState(0)`, called in the same order, gives the same
episodes. Checked against HSNet's data/pascal.py, coco.py, fss.py and PATNet's
data/deepglobe.py, isic.py, lung.py, fss.py:

- PASCAL-5i (HSNet): episode i takes entry i % len of the fold list
  data/splits/pascal/val/fold{f}.txt (lines `<image>__<class, 1-based>`) as
  its query and class; the class's candidates are the list's images of that
  class, in list order.
- COCO-20i (HSNet): per episode, the class is drawn from the fold's classes
  [f, f+4, ..., f+76] (0-based), then the query from that class's list in
  data/splits/coco/val/fold{f}.pkl (a dict: class -> image names).
- FSS-1000 (HSNet, PATNet): every test image is the query once, classes in
  name order, images in file-name order ('10.jpg' before '2.jpg'); a support
  is `<n>.jpg` of the query's class with n drawn from 1..10.
- Deepglobe, ISIC, Chest X-ray (PATNet): episode i's class is i % C; the
  query is drawn from that class's file-name-sorted list.
- Supports (all): drawn one at a time with `choice(candidates, 1,
  replace=False)`, kept unless equal to the query, so supports can repeat.

Functions here work on names (the records' `id`); mmtjax.data.episodes maps
them to records.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping, Sequence

import numpy as np

from mmtjax.errors import UserError

# An episode by name: (class id, 1-based; query id; support ids).
Named = tuple[int, str, tuple[str, ...]]


def _pick(rs: np.random.RandomState, candidates: Sequence) -> object:
  """np.random.choice(candidates, 1, replace=False)[0]: the same draw from `rs`."""
  return candidates[int(rs.choice(len(candidates), 1, replace=False)[0])]


def _supports(rs: np.random.RandomState, candidates: Sequence[str], query: str, shot: int,
              what: str) -> tuple[str, ...]:
  if not any(c != query for c in candidates):
    raise UserError(f'{what}: class has no image other than the query {query}; no support can differ from it')
  out = []
  while len(out) < shot:
    s = _pick(rs, candidates)
    if s != query:
      out.append(s)
  return tuple(out)


def fold_list_episodes(fold_list: Sequence[tuple[str, int]], num_episodes: int, shot: int,
                       seed: int = 0) -> list[Named]:
  """HSNet's PASCAL-5i episodes from its fold list [(image, class id 1-based)]."""
  classwise: dict[int, list[str]] = {}
  for name, c in fold_list:
    classwise.setdefault(c, []).append(name)
  rs = np.random.RandomState(seed)
  out = []
  for i in range(num_episodes):
    query, c = fold_list[i % len(fold_list)]
    out.append((c, query, _supports(rs, classwise[c], query, shot, f'fold list class {c}')))
  return out


def coco_episodes(classwise: Mapping[int, Sequence[str]], fold: int, num_episodes: int, shot: int,
                  seed: int = 0) -> list[Named]:
  """HSNet's COCO-20i episodes from its fold pickle {class id 0-based: [image name]}."""
  class_ids = [fold + 4 * v for v in range(20)]
  missing = [c for c in class_ids if not classwise.get(c)]
  if missing:
    raise UserError(f'the COCO fold list has no images for classes {[c + 1 for c in missing]} (1-based) of fold {fold}')
  rs = np.random.RandomState(seed)
  out = []
  for _ in range(num_episodes):
    c = _pick(rs, class_ids)
    query = _pick(rs, classwise[c])
    out.append((c + 1, query, _supports(rs, classwise[c], query, shot, f'COCO class {c + 1}')))
  return out


def fss_episodes(classes: Mapping[int, Sequence[str]], shot: int, seed: int = 0) -> list[Named]:
  """HSNet/PATNet's FSS-1000 test episodes. `classes`: class id -> image stems ('1'..'10'),
  the ids in class-name order."""
  rs = np.random.RandomState(seed)
  out = []
  for c, stems in classes.items():
    for query in sorted(stems, key=lambda s: f'{s}.jpg'):
      sups = []
      while len(sups) < shot:
        s = str(int(rs.choice(np.arange(1, 11), 1, replace=False)[0]))
        if s != query:
          sups.append(s)
      out.append((c, query, tuple(sups)))
  return out


def round_robin_episodes(class_lists: Sequence[tuple[int, Sequence[str]]], num_episodes: int,
                         shot: int, seed: int = 0) -> list[Named]:
  """PATNet's Deepglobe / ISIC / Chest X-ray episodes: class i % C, query and supports drawn from
  that class's sorted list. `class_lists`: [(class id, sorted names)] in PATNet's class order."""
  rs = np.random.RandomState(seed)
  out = []
  for i in range(num_episodes):
    c, names = class_lists[i % len(class_lists)]
    query = _pick(rs, names)
    out.append((c, query, _supports(rs, names, query, shot, f'class {c}')))
  return out


# Reading HSNet's list files -------------------------------------------------------------------

def sorted_round_robin(split, by_class: Mapping[int, Sequence[str]], suffix: str, num_episodes: int,
                       shot: int, seed: int = 0) -> list[Named]:
  """PATNet's episodes of a split (a SplitData) whose class lists are `by_class` (class -> ids):
  round_robin_episodes over classes 1..C, each class's ids sorted as its files are named (id +
  `suffix`); one line when a class has no image."""
  missing = [split.class_name(c) for c in range(1, split.num_classes + 1) if not by_class.get(c)]
  if missing:
    raise UserError(f'{split.dataset}: no image of class {", ".join(missing)}; PATNet\'s episodes cycle over all '
                    f'{split.num_classes} classes')
  return round_robin_episodes([(c, sorted(by_class[c], key=lambda n: n + suffix))
                               for c in range(1, split.num_classes + 1)], num_episodes, shot, seed)


def find_fold_list(data, dataset: str, short: str, fold: int, ext: str) -> str:
  """HSNet's fold list: data.fold_list, or fold{f}.<ext> in data.manual_dir or its
  splits/<short>/val or data/splits/<short>/val (HSNet's repository layout)."""
  if data.get('fold_list'):
    path = os.path.expanduser(data.fold_list)
    if not os.path.isfile(path):
      raise UserError(f'data.fold_list {path} is not a file')
    return path
  top = os.path.expanduser(data.get('manual_dir') or '.')
  for folder in (top, os.path.join(top, 'splits', short, 'val'), os.path.join(top, 'data', 'splits', short, 'val')):
    if os.path.isfile(os.path.join(folder, f'fold{fold}.{ext}')):
      return os.path.join(folder, f'fold{fold}.{ext}')
  raise UserError(f"protocol 'hsnet' on {dataset} replays HSNet's episode list data/splits/{short}/val/"
                  f'fold{fold}.{ext} (https://github.com/juhongm999/hsnet): pass --config.data.fold_list=PATH '
                  f'or put it in {top}')


def read_pascal_fold_list(path: str) -> list[tuple[str, int]]:
  """HSNet's data/splits/pascal/val/fold{f}.txt: [(image id, class id 1-based)]."""
  out = []
  with open(path) as f:  # Text mode: the files' CRLF line ends become '\n'.
    for n, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      name, sep, cls = line.rpartition('__')
      if not sep or not cls.isdigit():
        raise UserError(f'{path} line {n}: expected <image>__<class>, got {line!r} (is it HSNet\'s fold list?)')
      out.append((name, int(cls)))
  if not out:
    raise UserError(f'{path} holds no episode (expected lines <image>__<class>)')
  return out


class _NoGlobals(pickle.Unpickler):
  """Builds only dicts, lists, tuples, strings and numbers: any global or persistent id is refused."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f'refused global {module}.{name}')

  def persistent_load(self, pid):
    raise pickle.UnpicklingError('refused persistent id')


def read_coco_fold_list(path: str) -> dict[int, list[str]]:
  """HSNet's data/splits/coco/val/fold{f}.pkl ({class id 0-based: [image name]}), read without
  running code: a pickle that names any global is refused."""
  with open(path, 'rb') as f:
    data = f.read()
  try:
    obj = _NoGlobals(io.BytesIO(data)).load()
  except Exception as e:  # noqa: BLE001 - any unpickling failure is one message.
    raise UserError(f'{path}: not a plain COCO fold list ({e}); only dicts of lists of names are read') from None
  if not isinstance(obj, dict) or not all(isinstance(k, int) and isinstance(v, list) and
                                          all(isinstance(s, str) for s in v) for k, v in obj.items()):
    raise UserError(f'{path}: expected a dict {{class id: [image name]}}, got {type(obj).__name__}')
  return obj


def coco_id(name: str) -> str:
  """'val2014/COCO_val2014_000000000139.jpg' -> 'COCO_val2014_000000000139'."""
  return os.path.splitext(os.path.basename(name))[0]
