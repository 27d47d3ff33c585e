"""SUIM underwater imagery with 7 object classes, as used for MMT's cross-domain test.

Real layout: the released archive (https://irvlab.cs.umn.edu/resources/suim-dataset;
the same tree is described in the fansuregrin/SUIM notes on the dataset):
  train_val/images/<name>.jpg    train_val/masks/<name>.bmp    1525 images, e.g. d_r_5_
  TEST/images/<name>.jpg         TEST/masks/<name>.bmp         110 images
Masks are 24-bit colour BMPs; some train_val masks carry off-palette colours
along region borders (fansuregrin/SUIM lists d_r_5_, f_r_1007_, w_r_24_ ...),
which the per-channel threshold below absorbs. manual_dir may be the folder
holding train_val and TEST or up to 3 levels above it.

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

from mmtjax.data import protocols
from mmtjax.data.builders import raw
from mmtjax.errors import UserError

CLASS_NAMES = ('FV', 'HD', 'PF', 'RI', 'RO', 'SR', 'WR')
_CODES = {0b110: 1, 0b001: 2, 0b010: 3, 0b101: 4, 0b100: 5, 0b111: 6, 0b011: 7}
PARTS = ('train_val', 'TEST')


def colour_classes(mask_rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] SUIM colour mask -> [H, W] class ids (0 background)."""
  return raw.colour_classes(mask_rgb, _CODES, 0)


def _label(path: str) -> raw.Mask:
  mask = raw.mask_pixels(path)
  if mask.ndim != 3:
    raise UserError(f'{path}: expected an RGB colour mask, got shape {mask.shape}')
  return raw.Mask(colour_classes(mask))


class Suim(raw.RawBuilder):
  """SUIM (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://irvlab.cs.umn.edu/resources/suim-dataset'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  LAYOUTS = (tuple(f'{p}/{d}' for p in PARTS for d in ('images', 'masks')),)
  CLASS_NAMES = CLASS_NAMES
  DISPLAY_NAME = 'SUIM'
  # Not tested by the anchors: (a)'s size and seed, the episode class cycling over the 7 classes.
  PROTOCOLS = {'hsnet': protocols.hsnet(1000, order='round_robin'), 'uniform': protocols.uniform(1000, order='round_robin')}

  def items(self, root, split):
    del split
    for part in PARTS:
      folder = os.path.join(root, part, 'images')
      for name in sorted(f for f in os.listdir(folder) if f.lower().endswith('.jpg')):
        image = os.path.join(folder, name)
        mask = os.path.join(root, part, 'masks', os.path.splitext(name)[0] + '.bmp')
        yield raw.file_item(f'{part}/{name}', image, functools.partial(_label, mask),
                            id=os.path.splitext(name)[0], required=(image, mask), builder=self.name, page=self.DOWNLOAD_PAGE)
