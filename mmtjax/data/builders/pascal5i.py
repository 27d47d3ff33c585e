"""PASCAL-5i: PASCAL VOC 2012 with the SBD-augmented masks, in 4 folds of 5 classes.

Raw data (manual_dir), the layout of VOCdevkit/VOC2012 after adding the
SBD-augmented masks (SegmentationClassAug, distributed with PFENet/HSNet's
instructions):
  <manual_dir>/JPEGImages/<id>.jpg
  <manual_dir>/SegmentationClassAug/<id>.png        class ids 0-20, 255 boundary
  <manual_dir>/ImageSets/Segmentation/val.txt       the VOC 2012 val ids
Download: http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (images) and the
SegmentationClassAug masks (SBD, Hariharan et al.).

Splits: 'val' = the VOC 2012 val ids (1449); 'train' = every other image that
has a SegmentationClassAug mask (VOC train + SBD, no VOC val image).
The 255 boundary label is kept as ignore. Fold f tests classes 5f+1..5f+5
and trains on the other 15.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mmtjax.data.builders import raw
from mmtjax.errors import UserError

CLASS_NAMES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep',
               'sofa', 'train', 'tvmonitor')


def fold_classes(fold: int) -> tuple[int, ...]:
  """The 5 test classes of a fold (1-based VOC ids)."""
  return tuple(range(5 * fold + 1, 5 * fold + 6))


def _class_map(path: str) -> np.ndarray:
  label = raw.read_image(path)
  if label.ndim != 2:
    raise UserError(f'{path}: expected a single-channel class-id mask, got shape {label.shape}')
  return label.astype(np.uint8)


class Pascal5i(raw.RawBuilder):
  """PASCAL VOC 2012 + SBD masks for PASCAL-5i (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (+ SBD SegmentationClassAug)'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  REQUIRED = ('JPEGImages', 'SegmentationClassAug', 'ImageSets/Segmentation/val.txt')
  CLASS_NAMES = CLASS_NAMES
  SPLITS = ('train', 'val')

  def items(self, root, split):
    with open(os.path.join(root, 'ImageSets/Segmentation/val.txt')) as f:
      val = sorted({line.strip() for line in f if line.strip()})
    if split == 'val':
      ids = val
    else:
      masks = os.listdir(os.path.join(root, 'SegmentationClassAug'))
      ids = sorted(set(os.path.splitext(m)[0] for m in masks if m.endswith('.png')) - set(val))
    for i in ids:
      image = os.path.join(root, 'JPEGImages', f'{i}.jpg')
      label = os.path.join(root, 'SegmentationClassAug', f'{i}.png')
      yield raw.file_item(i, image, functools.partial(_class_map, label), required=(image, label),
                          builder=self.name, page=self.DOWNLOAD_PAGE)

  def split_classes(self, split, fold, training, indexed):
    del split, indexed
    return raw.fold_split(20, fold_classes(fold) if fold >= 0 else (), fold, training)
