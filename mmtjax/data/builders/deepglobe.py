"""Deepglobe land cover, tiled and filtered as in PATNet's cross-domain benchmark.

Raw data (manual_dir), the DeepGlobe 2018 land-cover challenge training set:
  <manual_dir>/train/<id>_sat.jpg     2448 x 2448 RGB satellite image
  <manual_dir>/train/<id>_mask.png    colour-coded land-cover mask
Download: https://competitions.codalab.org/competitions/18468 (or the Kaggle
mirror "deepglobe-land-cover-classification-dataset").

Preprocessing (a builder step, PATNet): each image is cut into a 6 x 6 grid of
408 x 408 tiles. Mask colours are thresholded at 128 per channel and mapped to
the 6 classes urban, agriculture, rangeland, forest, water, barren; unknown
(black) becomes 255. A tile is dropped when its mask has a single colour or
when its smallest region covers <= 4.8% of the tile (regions: the colours
present, unknown included). Tiles are stored as PNG. One split, 'test'.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mmtjax.data import transforms
from mmtjax.data.builders import raw
from mmtjax.errors import UserError
from mmtjax.labels import IGNORE_LABEL

CLASS_NAMES = ('urban', 'agriculture', 'rangeland', 'forest', 'water', 'barren')
# (R, G, B) after thresholding -> class id; (0, 0, 0) is unknown.
COLOURS = {(0, 1, 1): 1, (1, 1, 0): 2, (1, 0, 1): 3, (0, 1, 0): 4, (0, 0, 1): 5, (1, 1, 1): 6,
           (0, 0, 0): IGNORE_LABEL}
GRID = 6
TILE = 408
MIN_REGION = 0.048


def colour_classes(mask_rgb: np.ndarray) -> np.ndarray:
  """[H, W, 3] colour mask -> [H, W] class ids (255 unknown)."""
  codes = {r * 4 + g * 2 + b: c for (r, g, b), c in COLOURS.items()}
  return raw.colour_classes(mask_rgb, codes, IGNORE_LABEL)


def keep_tile(label: np.ndarray) -> bool:
  """PATNet's filter: more than one colour, and every region > 4.8% of the tile."""
  _, counts = np.unique(label, return_counts=True)
  return len(counts) > 1 and counts.min() / label.size > MIN_REGION


def tiles(image: np.ndarray, label: np.ndarray, grid: int | None = None, tile: int | None = None):
  """(row, col, image tile, label tile) of the grid (default GRID x GRID tiles of TILE px)."""
  grid, tile = grid or GRID, tile or TILE
  for r in range(grid):
    for c in range(grid):
      ys, xs = slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile)
      yield r, c, image[ys, xs], label[ys, xs]


class Deepglobe(raw.RawBuilder):
  """Deepglobe land-cover tiles (see the module docstring for the layout and preprocessing)."""

  DOWNLOAD_PAGE = 'https://competitions.codalab.org/competitions/18468'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  REQUIRED = ('train',)
  CLASS_NAMES = CLASS_NAMES

  def items(self, root, split):
    del split
    folder = os.path.join(root, 'train')
    for sat in sorted(f for f in os.listdir(folder) if f.endswith('_sat.jpg')):
      image_path = os.path.join(folder, sat)
      mask_path = raw.require(os.path.join(folder, sat.replace('_sat.jpg', '_mask.png')), self.name,
                              self.DOWNLOAD_PAGE)
      key = sat[:-len('_sat.jpg')]
      yield raw.Item(image_path, functools.partial(self._tiles, image_path, mask_path, key))

  def _tiles(self, image_path, mask_path, key):
    image = raw.read_image(image_path)
    label = colour_classes(raw.read_image(mask_path))
    if image.shape[:2] != label.shape or min(label.shape) < GRID * TILE:
      raise UserError(f'{image_path}: expected a {GRID * TILE}^2 image and mask, got '
                       f'{image.shape[:2]} and {label.shape}')
    return [raw.Example(f'{key}_{r}_{c}', transforms.encode_png(np.ascontiguousarray(im[..., :3])), lab)
            for r, c, im, lab in tiles(image, label) if keep_tile(lab)]
