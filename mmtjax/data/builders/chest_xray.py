"""Chest X-ray lung masks (Shenzhen and Montgomery sets), one class, as in PATNet.

Raw data (manual_dir), the Kaggle "Chest X-ray masks and labels" layout:
  <manual_dir>/CXR_png/<name>.png
  <manual_dir>/masks/<name>_mask.png   (Shenzhen)   or   <manual_dir>/masks/<name>.png
Download: https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels

Images without a mask are left out (counted in the build report). Masks are
binarised at 128; the grey X-rays are stored as they are and read as RGB.
Class 1 = lungs. One split, 'test'.
"""

from __future__ import annotations

import functools
import os

from mmtjax.data.builders import raw

CLASS_NAMES = ('lungs',)


class ChestXray(raw.RawBuilder):
  """Chest X-ray lungs (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://www.kaggle.com/datasets/nikhilpandey360/chest-xray-masks-and-labels'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  REQUIRED = ('CXR_png', 'masks')
  CLASS_NAMES = CLASS_NAMES

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
