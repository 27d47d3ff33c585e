"""Deepglobe land cover, tiled, filtered and split per class as in PATNet's benchmark.

Two real layouts build:
1. PATNet's preprocessed Deepglobe (the "Preprocessed Data" link of PATNet's
   README, https://github.com/slei109/PATNet), as its data/deepglobe.py reads it:
     Deepglobe/<c>/test/origin/<tile>.jpg         c = 1..6
     Deepglobe/<c>/test/groundtruth/<tile>.png    binary (0/255) mask of class c
   A tile appears under every class it holds, with that class's mask.
2. The challenge's training tiles (the Kaggle mirror
   balraj98/deepglobe-land-cover-classification-dataset; CodaLab competition
   18468):
     train/<id>_sat.jpg     2448 x 2448 RGB       train/<id>_mask.png   colour-coded
     (valid/ and test/ hold images without masks and are not used; class_dict.csv,
     metadata.csv beside them)
   built with the steps of PATNet's data/preprocess.py: each image is cut
   into a 6 x 6 grid (rows and columns at int(i * size / 6): 408 px tiles,
   named <id>_sat_<row><col>); a tile is kept when its raw mask has more than
   one colour and its rarest colour covers more than 4.8% of the tile, the
   colours counted exactly as stored (PIL getcolors, before any thresholding,
   so a stray off-palette pixel is a colour of its own); each kept tile then
   becomes one binary example per class whose colour occurs in it exactly.
manual_dir may be the root of either layout or up to 3 levels above it.

Class ids follow PATNet's folder numbers. preprocess.py lists the colours
[0,255,255], [255,255,0], [255,0,255], [0,255,0], [255,0,0], [255,255,255]
for folders 1-6 and reads masks with cv2.imread, which gives BGR, so folder 1
is RGB (255,255,0) agriculture and folder 2 RGB (0,255,255) urban [inferred
from cv2's channel order]: 1 agriculture, 2 urban, 3 rangeland, 4 forest,
5 water, 6 barren. Black (unknown) is no class. Masks are binarised at 128.
The build report gives the tiles per class (compare with PATNet's counts). One
split, 'test'.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mmtjax.data import protocols, transforms
from mmtjax.data.builders import raw
from mmtjax.errors import UserError

CLASS_NAMES = ('agriculture', 'urban', 'rangeland', 'forest', 'water', 'barren')
# RGB colour of each class id (PATNet's folder order).
COLOURS = {1: (255, 255, 0), 2: (0, 255, 255), 3: (255, 0, 255), 4: (0, 255, 0), 5: (0, 0, 255),
           6: (255, 255, 255)}
GRID = 6
MIN_REGION = 0.048
PREPROCESSED = tuple(f'{c}/test/{d}' for c in range(1, 7) for d in ('origin', 'groundtruth'))


def keep_tile(mask_rgb: np.ndarray) -> bool:
  """PATNet's filter on a raw mask tile: more than one colour, each covering > 4.8% of it."""
  codes = mask_rgb[..., :3].astype(np.int32) @ np.array([65536, 256, 1], np.int32)
  _, counts = np.unique(codes, return_counts=True)
  return len(counts) > 1 and counts.min() / codes.size > MIN_REGION


def tiles(image: np.ndarray, mask: np.ndarray, grid: int = GRID):
  """(row, col, image tile, mask tile), cut at int(i * size / grid) as PATNet's step 1."""
  h, w = mask.shape[:2]
  for r in range(grid):
    for c in range(grid):
      ys = slice(int(r * h / grid), int((r + 1) * h / grid))
      xs = slice(int(c * w / grid), int((c + 1) * w / grid))
      yield r, c, image[ys, xs], mask[ys, xs]


def class_masks(mask_rgb: np.ndarray) -> dict[int, np.ndarray]:
  """class id -> {0, 1} mask of the pixels exactly of its colour, for the classes present."""
  out = {}
  for class_id, colour in COLOURS.items():
    m = np.all(mask_rgb[..., :3] == np.asarray(colour, np.uint8), axis=-1)
    if m.any():
      out[class_id] = m.astype(np.uint8)
  return out


class Deepglobe(raw.RawBuilder):
  """Deepglobe land-cover tiles (see the module docstring for the layouts and preprocessing)."""

  DOWNLOAD_PAGE = ('https://www.kaggle.com/datasets/balraj98/deepglobe-land-cover-classification-dataset '
                   "(or PATNet's preprocessed Deepglobe)")
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  LAYOUTS = (PREPROCESSED, ('train',))
  CLASS_NAMES = CLASS_NAMES
  DISPLAY_NAME = 'Deepglobe'
  PROTOCOLS = {'hsnet': protocols.hsnet(600, anchors=True), 'uniform': protocols.uniform(600)}
  SUITES = ('patnet',)
  ANCHOR_SORT_SUFFIX = '.jpg'  # PATNet sorts a class's files by the image's name

  def is_root(self, path):
    layout = super().is_root(path)
    if layout == 1 and not any(f.endswith('_sat.jpg') for f in os.listdir(os.path.join(path, 'train'))):
      return None
    return layout

  def items(self, root, split):
    del split
    if self.layout == 0:
      yield from self._preprocessed(root)
      return
    folder = os.path.join(root, 'train')
    for sat in sorted(f for f in os.listdir(folder) if f.endswith('_sat.jpg')):
      image_path = os.path.join(folder, sat)
      mask_path = raw.require(os.path.join(folder, sat.replace('_sat.jpg', '_mask.png')), self.name,
                              self.DOWNLOAD_PAGE)
      yield raw.Item(image_path, functools.partial(self._tiles, image_path, mask_path, sat[:-4]))

  def _preprocessed(self, root):
    for c in range(1, 7):
      origin = os.path.join(root, str(c), 'test', 'origin')
      for name in sorted(f for f in os.listdir(origin) if f.endswith('.jpg')):
        image = os.path.join(origin, name)
        mask = os.path.join(root, str(c), 'test', 'groundtruth', name[:-4] + '.png')
        yield raw.file_item(f'{c}/{name[:-4]}', image, functools.partial(raw.binary_mask, mask), binary=True,
                            class_id=c, id=name[:-4], required=(image, mask), builder=self.name, page=self.DOWNLOAD_PAGE)

  def _tiles(self, image_path, mask_path, stem):
    image = raw.read_image(image_path)
    mask = raw.mask_pixels(mask_path)
    if mask.ndim != 3:
      raise UserError(f'{mask_path}: expected a colour-coded RGB mask, got shape {mask.shape}')
    if image.shape[:2] != mask.shape[:2]:
      raise UserError(f'{image_path}: image {image.shape[:2]} and mask {mask.shape[:2]} differ in size')
    out = []
    for r, c, im, m in tiles(image, mask):
      if not keep_tile(m):
        continue
      encoded = transforms.encode_png(np.ascontiguousarray(transforms.to_rgb(im)))
      tile = f'{stem}_{r}{c}'  # PATNet's step 1 names the image tile <id>_sat_<row><col>
      out += [raw.Example(f'{tile}/{k}', encoded, binary, True, k, id=tile) for k, binary in class_masks(m).items()]
    return out
