"""ISIC 2018 task 1 lesion masks with the 3 diagnosis classes of PATNet's benchmark.

Real layout: the task 1 training archives of https://challenge.isic-archive.com/data/#2018
(ISIC2018_Task1-2_Training_Input.zip, ISIC2018_Task1_Training_GroundTruth.zip)
unpack to
  ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ... ISIC_0016072.jpg   2594 images
                                 (+ ATTRIBUTION.txt, LICENSE.txt)
  ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png       0/255 grey PNG
The classes are not in any ISIC 2018 file (the task 3 CSV lists the HAM10000
ids ISIC_0024306 onwards, none of the task 1 images). PATNet labels them with
its own data/isic/class_id.csv (https://github.com/slei109/PATNet; columns
ID,Class; 1867 nevus, 519 melanoma, 208 seborrheic_keratosis) and its
data/isic.py reads the images already sorted into class folders:
  ISIC2018_Task1-2_Training_Input/{1,2,3}/ISIC_<id>.jpg    1 nevus, 2 melanoma, 3 seb. keratosis
Both layouts build. For the unsorted one the builder needs PATNet's
class_id.csv: `--config.data.class_list=PATH`, or a class_id.csv in the data
root or manual_dir. manual_dir may be the data root or up to 3 levels above it
(PATNet's tree has it under ISIC/).

Masks are binarised as PATNet does (grey, >= 128; any PNG mode decodes). The
build report gives the images per class and how many images had no class.
One split, 'test'.
"""

from __future__ import annotations

import csv
import functools
import os

from mmtjax.data import protocols
from mmtjax.data.builders import raw

CLASS_NAMES = ('nevus', 'melanoma', 'seborrheic_keratosis')
IMAGES = 'ISIC2018_Task1-2_Training_Input'
MASKS = 'ISIC2018_Task1_Training_GroundTruth'
CLASS_LIST = 'class_id.csv'
PATNET = 'https://github.com/slei109/PATNet (data/isic/class_id.csv)'


def read_class_list(path: str) -> dict[str, int]:
  """image id -> class id (1-3), from PATNet's class_id.csv (columns ID, Class)."""
  ids = {name: i + 1 for i, name in enumerate(CLASS_NAMES)}
  out = {}
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or not {'ID', 'Class'} <= set(reader.fieldnames):
      raise raw.RawDataError(f'isic2018: {path} is not PATNet\'s class list (expected the columns ID,Class; '
                             f'found {reader.fieldnames}); get it from {PATNET}')
    for line, row in enumerate(reader, start=2):
      name = (row['Class'] or '').strip()
      if name not in ids:
        raise raw.RawDataError(f'isic2018: {path} line {line}: unknown class {name!r} '
                               f'(expected one of {list(CLASS_NAMES)})')
      out[row['ID'].strip()] = ids[name]
  return out


class Isic2018(raw.RawBuilder):
  """ISIC 2018 (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://challenge.isic-archive.com/data/#2018'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  # PATNet's class folders first: a tree that has them is read as PATNet reads it.
  LAYOUTS = ((f'{IMAGES}/1', f'{IMAGES}/2', f'{IMAGES}/3', MASKS), (IMAGES, MASKS))
  CLASS_NAMES = CLASS_NAMES
  DISPLAY_NAME = 'ISIC2018'
  PROTOCOLS = {'hsnet': protocols.hsnet(600, anchors=True), 'uniform': protocols.uniform(600)}
  SUITES = ('patnet',)
  ANCHOR_SORT_SUFFIX = '.jpg'  # PATNet sorts a class's files by the image's name
  def _class_list_path(self, root: str) -> str:
    if self.class_list:
      path = os.path.expanduser(self.class_list)
      if not os.path.isfile(path):
        raise raw.RawDataError(f'isic2018: data.class_list {path} is not a file; get PATNet\'s class list '
                               f'from {PATNET}')
      return path
    for folder in (root, os.path.dirname(root), self.manual_top or root):
      if os.path.isfile(os.path.join(folder, CLASS_LIST)):
        return os.path.join(folder, CLASS_LIST)
    raise raw.RawDataError(
        f'isic2018: the images in {os.path.join(root, IMAGES)} are not sorted into the class folders '
        f'1/2/3 and no {CLASS_LIST} was found in {root}; get PATNet\'s class list from {PATNET} and put '
        f'it there, or pass --config.data.class_list=PATH')

  def _labelled_images(self, root: str, split: str) -> list[tuple[str, str, int]]:
    """(image id, image path, class id) of every labelled image, in class and file-name order."""
    folder = os.path.join(root, IMAGES)
    if self.layout == 0:  # PATNet's class folders.
      return [(f[:-4], os.path.join(folder, str(c), f), c) for c in (1, 2, 3)
              for f in sorted(os.listdir(os.path.join(folder, str(c)))) if f.endswith('.jpg')]
    path = self._class_list_path(root)
    classes = read_class_list(path)
    images = sorted(f for f in os.listdir(folder) if f.endswith('.jpg'))
    unlabelled = sum(f[:-4] not in classes for f in images)
    listed_absent = len(set(classes) - {f[:-4] for f in images})
    report = self.build_report[split]
    report['class_list'] = path
    report['notes'].append(f'{unlabelled} of {len(images)} images have no class in {path} (left out); '
                           f'{listed_absent} of its {len(classes)} ids have no image')
    return sorted(((f[:-4], os.path.join(folder, f), classes[f[:-4]]) for f in images if f[:-4] in classes),
                  key=lambda t: (t[2], t[0]))

  def items(self, root, split):
    for image_id, image, class_id in self._labelled_images(root, split):
      mask = os.path.join(root, MASKS, f'{image_id}_segmentation.png')
      yield raw.file_item(image_id, image, functools.partial(raw.binary_mask, mask), binary=True,
                          class_id=class_id, required=(image, mask), builder=self.name,
                          page=self.DOWNLOAD_PAGE)

  def why_empty(self, root, split):
    if self.layout == 0:
      return f'the class folders {os.path.join(root, IMAGES)}/{{1,2,3}} hold no .jpg image'
    path = self._class_list_path(root)
    listed = sorted(read_class_list(path))
    return (f'{path} lists {len(listed)} images (first: {listed[0] if listed else "-"}), none of which is in '
            f'{os.path.join(root, IMAGES)}; is it PATNet\'s list for the task 1 training images?')
