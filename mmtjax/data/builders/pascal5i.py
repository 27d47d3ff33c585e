"""PASCAL-5i: PASCAL VOC 2012 with the SBD-augmented masks, in 4 folds of 5 classes.

Real layout: VOCtrainval_11-May-2012.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)
unpacks to VOCdevkit/VOC2012/{Annotations, ImageSets/{Action,Layout,Main,Segmentation},
JPEGImages, SegmentationClass, SegmentationObject}; the SBD-augmented masks
(SegmentationClassAug.zip, linked from PFENet's and HSNet's READMEs; HSNet's
data/pascal.py reads <datapath>/VOC2012/SegmentationClassAug/<id>.png) are unpacked
beside them:
  VOCdevkit/VOC2012/JPEGImages/<id>.jpg             e.g. 2007_000033.jpg
  VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   8-bit class ids 0-20, 255 boundary
  VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt  the 1449 VOC 2012 val ids
manual_dir may be VOC2012, VOCdevkit or the folder the tar was unpacked into.
Masks are read as HSNet does (the stored values are the ids); palette PNGs (VOC's
own SegmentationClass encoding) decode the same way. Values other than 0-20
and 255 become 255 (ignored), noted in the build report.

Splits: 'val' = the VOC 2012 val ids (1449); 'train' = every other image that
has a SegmentationClassAug mask (VOC train + SBD, no VOC val image).
The 255 boundary label is kept as ignore. Fold f tests classes 5f+1..5f+5
and trains on the other 15; fold -1 uses all 20 (PATNet's source domain).
"""

from __future__ import annotations

import functools
import os

from mmtjax.data import anchors, protocols
from mmtjax.data.builders import raw

CLASS_NAMES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep',
               'sofa', 'train', 'tvmonitor')


def fold_classes(fold: int) -> tuple[int, ...]:
  """The 5 test classes of a fold (1-based VOC ids)."""
  return tuple(range(5 * fold + 1, 5 * fold + 6))


class Pascal5i(raw.RawBuilder):
  """PASCAL VOC 2012 + SBD masks for PASCAL-5i (see the module docstring for the layout)."""

  DOWNLOAD_PAGE = 'http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (+ SBD SegmentationClassAug)'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  LAYOUTS = (('JPEGImages', 'SegmentationClassAug', 'ImageSets/Segmentation/val.txt'),)
  CLASS_NAMES = CLASS_NAMES
  SPLITS = ('train', 'val')
  DEFAULTS = dict(train_split='train', val_split='val', test_split='val', protocol='hsnet')
  DISPLAY_NAME = 'PASCAL-5i'
  PROTOCOLS = {'hsnet': protocols.hsnet(1000, anchors=True), 'uniform': protocols.uniform(1000),
               'pfenet': protocols.pfenet(5000)}

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
      yield raw.file_item(i, image, functools.partial(raw.class_map, label, 20), required=(image, label),
                          builder=self.name, page=self.DOWNLOAD_PAGE)

  def split_classes(self, split, fold, training, indexed):
    del split, indexed
    return raw.fold_split(20, fold_classes(fold) if fold >= 0 else (), fold, training)

  def anchor_episodes(self, split, data, by_class, shot, num_episodes, seed):
    """HSNet's: its fold list data/splits/pascal/val/fold{f}.txt, entry i % len the query of episode i."""
    del split, by_class
    path = anchors.find_fold_list(data, self.name, 'pascal', data.fold, 'txt')
    return anchors.fold_list_episodes(anchors.read_pascal_fold_list(path), num_episodes, shot, seed)
