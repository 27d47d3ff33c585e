"""FSS-1000: 1000 classes of 10 images each, split by FSS-1000's published class lists.

Real layout: the released archive fewshot_data.zip (https://github.com/HKUSTCV/FSS-1000,
the link PATNet's README gives too), as HSNet's and PATNet's data/fss.py read it:
  fewshot_data/<class name>/<n>.jpg    n = 1..10, the image (JPEG)
  fewshot_data/<class name>/<n>.png    its mask (PNG, same stem)
manual_dir may be fewshot_data itself or a folder above it. Masks are binarised
as HSNet/PATNet do (grey, >= 128 is foreground); any PNG mode decodes
(raw.binary_mask).

Splits are HSNet's published class lists data/splits/fss/{trn,val,test}.txt
(520 / 240 / 240 names; the test list is the one HSNet, PATNet and the
cross-domain papers after them test on), shipped as package data in
mmtjax/data/splits/fss1000/{train,val,test}.txt. Within a split classes are
sorted by name; ids are 1-based and continue across the splits as HSNet's
do (train 1-520, val 521-760, test 761-1000). A listed class whose folder is
missing from the download is named in the build report.
"""

from __future__ import annotations

import functools
import importlib.resources
import os

from mmtjax.data import anchors, protocols
from mmtjax.data.builders import raw

SPLITS = ('train', 'val', 'test')


@functools.cache
def published_classes(split: str) -> tuple[str, ...]:
  """The sorted class names of a published split (package data)."""
  text = importlib.resources.files('mmtjax.data').joinpath(f'splits/fss1000/{split}.txt').read_text()
  return tuple(sorted(line.strip() for line in text.splitlines() if line.strip()))


def class_ids(split: str) -> dict[str, int]:
  """Class name -> 1-based id (train 1-520, val 521-760, test 761-1000)."""
  offset = sum(len(published_classes(s)) for s in SPLITS[:SPLITS.index(split)])
  return {name: offset + i + 1 for i, name in enumerate(published_classes(split))}


def _is_pair_folder(path: str) -> bool:
  try:
    names = set(os.listdir(path))
  except OSError:
    return False
  return any(n.endswith('.jpg') and n[:-4] + '.png' in names for n in names)


class Fss1000(raw.RawBuilder):
  """FSS-1000 (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://github.com/HKUSTCV/FSS-1000 (fewshot_data.zip)'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  SPLITS = SPLITS
  DEFAULTS = dict(train_split='train', val_split='val', test_split='test', protocol='hsnet')
  DISPLAY_NAME = 'FSS-1000'
  # Every test image the query once (2400 episodes): HSNet's order, or mmtjax's sampler's.
  PROTOCOLS = {'hsnet': protocols.hsnet(None, anchors=True), 'uniform': protocols.uniform(None, order='each_query')}
  SUITES = ('patnet',)

  @classmethod
  def layouts_text(cls):
    return '{CLASS/1.jpg, CLASS/1.png} for its 1000 class folders'

  def anchor_episodes(self, split, data, by_class, shot, num_episodes, seed):
    """HSNet's and PATNet's: every test image the query once, classes and files in name order."""
    del data, num_episodes
    stems = {c: [n.split('/', 1)[1] for n in by_class[c]] for c in sorted(by_class)}
    return [(c, f'{split.class_name(c)}/{q}', tuple(f'{split.class_name(c)}/{s}' for s in sup))
            for c, q, sup in anchors.fss_episodes(stems, shot, seed)]

  def class_names(self, root=None):
    del root
    return tuple(n for s in SPLITS for n in published_classes(s))

  def is_root(self, path):
    """A folder holding a class folder of FSS-1000's lists with an <n>.jpg / <n>.png pair."""
    known = set(self.class_names())
    folders = [d for d in raw._subdirs(path) if d in known]
    return 0 if any(_is_pair_folder(os.path.join(path, d)) for d in folders[:20]) else None

  def no_root_message(self, top, seen):
    del seen
    return (f'fss1000: no folder at or up to {self.SEARCH_DEPTH} levels below {top} holds class '
            f'folders named as in FSS-1000 (e.g. {published_classes("test")[0]}/1.jpg with 1.png); '
            f'download fewshot_data.zip from {self.DOWNLOAD_PAGE}')

  def items(self, root, split):
    present = set(raw._subdirs(root))
    ids = class_ids(split)
    missing = [c for c in ids if c not in present]
    if missing and len(missing) < len(ids):
      self.build_report[split]['notes'].append(
          f'{len(missing)} of the {len(ids)} classes of the published {split!r} list have no folder '
          f'under {root}: {", ".join(missing[:10])}{" ..." if len(missing) > 10 else ""}')
    for name, class_id in ids.items():
      if name not in present:
        continue
      folder = os.path.join(root, name)
      for file in sorted(f for f in os.listdir(folder) if f.endswith('.jpg')):
        image = os.path.join(folder, file)
        mask = image[:-4] + '.png'
        yield raw.file_item(f'{name}/{file[:-4]}', image, functools.partial(raw.binary_mask, mask),
                            binary=True, class_id=class_id, required=(image, mask),
                            builder=self.name, page=self.DOWNLOAD_PAGE)

  def why_empty(self, root, split):
    present = raw._subdirs(root)
    listed = {s: sum(d in class_ids(s) for d in present) for s in SPLITS}
    return (f'none of the {len(class_ids(split))} classes of FSS-1000\'s published {split!r} list has a '
            f'folder under {root} (found {len(present)} class folders: '
            + ', '.join(f'{n} in the {s!r} list' for s, n in listed.items()) + ')')
