"""SUIM underwater imagery with 7 object classes, as used for MMT's cross-domain test.

Raw data (manual_dir), the released archive:
  <manual_dir>/train_val/images/<name>.jpg    <manual_dir>/train_val/masks/<name>.bmp
  <manual_dir>/TEST/images/<name>.jpg         <manual_dir>/TEST/masks/<name>.bmp
Download: https://irvlab.cs.umn.edu/resources/suim-dataset

train_val and TEST are merged into one split, 'test'. Mask colours are
thresholded at 128 per channel into SUIM's 3-bit codes; the classes are FV
fish (110), HD divers (001), PF plants (010), RI reefs (101), RO robots (100),
SR sea floor (111), WR wrecks (011) as ids 1-7; background water (000) is 0.
Images whose mask holds none of the 7 classes are dropped. Test episodes
cycle over the classes (episode i has class i mod 7, protocol 'hsnet').
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mmtjax.data.builders import raw
from mmtjax.errors import UserError

CLASS_NAMES = ('FV', 'HD', 'PF', 'RI', 'RO', 'SR', 'WR')
_CODES = {0b110: 1, 0b001: 2, 0b010: 3, 0b101: 4, 0b100: 5, 0b111: 6, 0b011: 7}
PARTS = ('train_val', 'TEST')


def colour_classes(mask_rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] SUIM colour mask -> [H, W] class ids (0 background)."""
  return raw.colour_classes(mask_rgb, _CODES, 0)


def _label(path: str) -> np.ndarray:
  mask = raw.read_image(path)
  if mask.ndim != 3:
    raise UserError(f'{path}: expected an RGB colour mask, got shape {mask.shape}')
  return colour_classes(mask)


class Suim(raw.RawBuilder):
  """SUIM (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://irvlab.cs.umn.edu/resources/suim-dataset'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  REQUIRED = tuple(f'{p}/{d}' for p in PARTS for d in ('images', 'masks'))
  CLASS_NAMES = CLASS_NAMES

  def items(self, root, split):
    del split
    for part in PARTS:
      folder = os.path.join(root, part, 'images')
      for name in sorted(f for f in os.listdir(folder) if f.lower().endswith('.jpg')):
        image = os.path.join(folder, name)
        mask = os.path.join(root, part, 'masks', os.path.splitext(name)[0] + '.bmp')
        yield raw.file_item(f'{part}/{name}', image, functools.partial(_label, mask),
                            required=(image, mask), builder=self.name, page=self.DOWNLOAD_PAGE)
