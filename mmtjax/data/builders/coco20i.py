"""COCO-20i: COCO 2014 instances as per-class masks, in 4 interleaved folds of 20 classes.

Real layout: the 2014 archives of https://cocodataset.org/#download unpacked
into one folder (train2014.zip, val2014.zip, annotations_trainval2014.zip):
  train2014/COCO_train2014_<12-digit id>.jpg    e.g. COCO_train2014_000000000009.jpg
  val2014/COCO_val2014_<12-digit id>.jpg
  annotations/instances_train2014.json          polygons, RLE and crowd RLE
  annotations/instances_val2014.json
manual_dir may be that folder or one up to 3 levels above it. (HSNet instead
reads per-image PNG masks it preprocessed, COCO2014/annotations/<split>2014/
*.png; those are not a public download, so mmtjax renders the masks from the
official JSON.)

The 80 categories, in increasing COCO id, become classes 1..80. Polygons and
RLEs are decoded with pycocotools (the reference implementation; install
`mmtjax[coco]`). Instances are painted in annotation order (a later instance
overwrites an earlier one where they overlap); crowd regions are 255
(ignored). Fold f tests classes {f+1, f+5, ..., f+77} (PFENet's use_split_coco,
HSNet) and trains on the other 60. Splits: 'train' (train2014), 'val' (val2014).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from mmtjax.data import anchors, protocols
from mmtjax.data.builders import raw
from mmtjax.labels import IGNORE_LABEL

CLASS_NAMES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')  # In increasing COCO category id.


def fold_classes(fold: int) -> tuple[int, ...]:
  """The 20 test classes of a fold: every 4th class starting at fold + 1."""
  return tuple(range(fold + 1, 81, 4))


class Coco20i(raw.RawBuilder):
  """COCO 2014 instances for COCO-20i (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'https://cocodataset.org/#download'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  LAYOUTS = (('train2014', 'val2014', 'annotations/instances_train2014.json',
               'annotations/instances_val2014.json'),)
  SPLITS = ('train', 'val')
  DEFAULTS = dict(train_split='train', val_split='val', test_split='val', protocol='hsnet')
  DISPLAY_NAME = 'COCO-20i'
  PROTOCOLS = {'hsnet': protocols.hsnet(1000, anchors=True), 'uniform': protocols.uniform(1000),
               'pfenet': protocols.pfenet(20000)}
  CLASS_NAMES = CLASS_NAMES

  def items(self, root, split):
    try:
      from pycocotools import mask as mask_utils
      from pycocotools.coco import COCO
    except ImportError as e:
      raise ImportError("building coco20i needs pycocotools: pip install 'mmtjax[coco]'") from e
    images_dir = os.path.join(root, f'{split}2014')
    coco = COCO(os.path.join(root, f'annotations/instances_{split}2014.json'))
    cat_ids = sorted(coco.getCatIds())
    if len(cat_ids) > 255:
      raise raw.RawDataError(f'coco20i: {len(cat_ids)} categories do not fit a uint8 label map')
    class_of = {cat: i + 1 for i, cat in enumerate(cat_ids)}

    def label_fn(image_id, h, w):
      label = np.zeros((h, w), np.uint8)
      for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
        seg = ann['segmentation']
        if isinstance(seg, list):  # polygons
          rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg['counts'], list):  # uncompressed RLE
          rle = mask_utils.frPyObjects(seg, h, w)
        else:
          rle = seg
        m = mask_utils.decode(rle).astype(bool)
        label[m] = IGNORE_LABEL if ann.get('iscrowd', 0) else class_of[ann['category_id']]
      return raw.Mask(label)

    for image_id in sorted(coco.getImgIds()):
      info = coco.loadImgs([image_id])[0]
      path = os.path.join(images_dir, info['file_name'])
      yield raw.file_item(str(image_id), path,
                          functools.partial(label_fn, image_id, info['height'], info['width']),
                          id=os.path.splitext(info['file_name'])[0], required=(path,), builder=self.name, page=self.DOWNLOAD_PAGE)

  def split_classes(self, split, fold, training, indexed):
    del split, indexed
    return raw.fold_split(80, fold_classes(fold) if fold >= 0 else (), fold, training)

  def anchor_episodes(self, split, data, by_class, shot, num_episodes, seed):
    """HSNet's: the class drawn from the fold's, then the query from data/splits/coco/val/fold{f}.pkl."""
    del split, by_class
    lists = anchors.read_coco_fold_list(anchors.find_fold_list(data, self.name, 'coco', data.fold, 'pkl'))
    return anchors.coco_episodes({c: [anchors.coco_id(n) for n in v] for c, v in lists.items()}, data.fold,
                                 num_episodes, shot, seed)
