"""FSS-1000: 1000 classes of 10 images each, split by class as HSNet (520 / 240 / 240).

Raw data (manual_dir), the released archive:
  <manual_dir>/<class name>/<n>.jpg   and   <manual_dir>/<class name>/<n>.png (mask)
Download: https://github.com/HKUSTCV/FSS-1000 (fewshot_data.zip).

Classes are the folders in sorted order, ids 1..C; the first 52% are 'train',
the next 24% 'val', the last 24% 'test' (520 / 240 / 240 of 1000, HSNet's
sizes; test = classes 760-999 counted from 0). Masks are binarised at 128.
"""

from __future__ import annotations

import functools
import os

from mmtjax.data.builders import raw

SPLIT_FRACTIONS = {'train': (0.0, 0.52), 'val': (0.52, 0.76), 'test': (0.76, 1.0)}


def class_folders(root: str) -> list[str]:
  return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))


def split_range(split: str, num_classes: int) -> range:
  """0-based class positions of a split."""
  lo, hi = SPLIT_FRACTIONS[split]
  return range(round(lo * num_classes), round(hi * num_classes))


class Fss1000(raw.RawBuilder):
  """FSS-1000 (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://github.com/HKUSTCV/FSS-1000'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  SPLITS = ('train', 'val', 'test')

  def items(self, root, split):
    folders = class_folders(root)
    for pos in split_range(split, len(folders)):
      folder = os.path.join(root, folders[pos])
      for name in sorted(f for f in os.listdir(folder) if f.endswith('.jpg')):
        image = os.path.join(folder, name)
        mask = os.path.splitext(image)[0] + '.png'
        yield raw.file_item(f'{folders[pos]}/{name}', image, functools.partial(raw.binary_mask, mask),
                            binary=True, class_id=pos + 1, required=(image, mask),
                            builder=self.name, page=self.DOWNLOAD_PAGE)
