"""Chest X-ray lung masks (Shenzhen and Montgomery sets), one class, as in PATNet.

Real layout: the Kaggle dataset "Chest X-ray masks and labels"
(https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels,
the link in PATNet's README) unpacks to a folder "Lung Segmentation" (PATNet's
data/lung.py reads it renamed to LungSegmentation):
  Lung Segmentation/CXR_png/CHNCXR_0001_0.png      Shenzhen X-ray (the last digit: 0 normal, 1 TB)
  Lung Segmentation/CXR_png/MCUCXR_0001_0.png      Montgomery X-ray
  Lung Segmentation/masks/CHNCXR_0001_0_mask.png   Shenzhen masks carry a _mask suffix
  Lung Segmentation/masks/MCUCXR_0001_0.png        Montgomery masks do not
  Lung Segmentation/test/*.png                     X-rays without masks (not used)
manual_dir may be "Lung Segmentation" or a folder up to 3 levels above it.
Masks are binarised as PATNet does (grey, >= 128), any PNG mode decoding
(raw.binary_mask); the grey X-rays are stored as they are and read as RGB.

Every image with a mask is used. (PATNet's data/lung.py lists the mask folder
and cuts 9 characters, '_mask.png', off each mask name to find its image, which
is right only for the Shenzhen names.) Images without a mask are left out and
counted in the build report. Class 1 = lungs. One split, 'test'.
"""

from __future__ import annotations

import functools
import os

from mmtjax.data import protocols
from mmtjax.data.builders import raw

CLASS_NAMES = ('lungs',)


class ChestXray(raw.RawBuilder):
  """Chest X-ray lungs (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  LAYOUTS = (('CXR_png', 'masks'),)
  CLASS_NAMES = CLASS_NAMES
  DISPLAY_NAME = 'Chest X-ray'
  PROTOCOLS = {'hsnet': protocols.hsnet(600, anchors=True), 'uniform': protocols.uniform(600)}
  SUITES = ('patnet',)
  ANCHOR_SORT_SUFFIX = '_mask.png'  # PATNet sorts a class's files by the mask's name

  def items(self, root, split):
    masks = set(os.listdir(os.path.join(root, 'masks')))
    folder = os.path.join(root, 'CXR_png')
    left_out = 0
    for name in sorted(f for f in os.listdir(folder) if f.endswith('.png')):
      stem = name[:-4]
      mask = next((m for m in (f'{stem}_mask.png', name) if m in masks), None)
      if mask is None:
        left_out += 1
        continue
      image = os.path.join(folder, name)
      yield raw.file_item(stem, image, functools.partial(raw.binary_mask, os.path.join(root, 'masks', mask)),
                          binary=True, class_id=1, required=(image,), builder=self.name,
                          page=self.DOWNLOAD_PAGE)
    if left_out:
      self.build_report[split]['notes'].append(f'{left_out} images without a mask were left out')
