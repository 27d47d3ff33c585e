"""ISIC 2018 task 1 lesion masks with the 3 diagnosis classes of PATNet's benchmark.

Raw data (manual_dir), as extracted from the ISIC 2018 challenge:
  <manual_dir>/ISIC2018_Task1-2_Training_Input/ISIC_<id>.jpg
  <manual_dir>/ISIC2018_Task1_Training_GroundTruth/ISIC_<id>_segmentation.png
  <manual_dir>/ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv
Download: https://challenge.isic-archive.com/data/#2018 (task 1 input and
ground truth, task 3 ground truth).

The class of an image is its task 3 diagnosis: 1 nevus (NV, 1867 images),
2 melanoma (MEL, 519), 3 seborrheic keratosis (BKL, 208). Images with
another diagnosis or none are left out (counted in the build report).
Masks are binarised at 128. One split, 'test'.
"""

from __future__ import annotations

import csv
import functools
import os

from mmtjax.data.builders import raw

CLASS_NAMES = ('nevus', 'melanoma', 'seborrheic_keratosis')
_DIAGNOSIS = {'NV': 1, 'MEL': 2, 'BKL': 3}
IMAGES = 'ISIC2018_Task1-2_Training_Input'
MASKS = 'ISIC2018_Task1_Training_GroundTruth'
LABELS = 'ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv'


def read_diagnoses(path: str) -> dict[str, int]:
  """image id -> class id, from the task 3 one-hot CSV (columns image, MEL, NV, BCC, ...)."""
  out = {}
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      hits = [c for name, c in _DIAGNOSIS.items() if float(row.get(name) or 0) >= 0.5]
      if len(hits) == 1:
        out[row['image']] = hits[0]
  return out


class Isic2018(raw.RawBuilder):
  """ISIC 2018 (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://challenge.isic-archive.com/data/#2018'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  REQUIRED = (IMAGES, MASKS, LABELS)
  CLASS_NAMES = CLASS_NAMES

  def items(self, root, split):
    diagnoses = read_diagnoses(os.path.join(root, LABELS))
    folder = os.path.join(root, IMAGES)
    left_out = 0
    for name in sorted(f for f in os.listdir(folder) if f.endswith('.jpg')):
      image_id = name[:-4]
      if image_id not in diagnoses:
        left_out += 1
        continue
      image = os.path.join(folder, name)
      mask = os.path.join(root, MASKS, f'{image_id}_segmentation.png')
      yield raw.file_item(image_id, image, functools.partial(raw.binary_mask, mask), binary=True,
                          class_id=diagnoses[image_id], required=(image, mask), builder=self.name,
                          page=self.DOWNLOAD_PAGE)
    if left_out:
      self.build_report[split]['notes'].append(
          f'{left_out} images without an NV/MEL/BKL diagnosis were left out')
