"""Each raw-data builder on a small fake tree in the dataset's real layout."""

import csv
import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmtjax.data import datasets, episodes, transforms
from mmtjax.data.builders import deepglobe, pascal5i, raw

RNG = np.random.default_rng(0)


def _image(path, h=24, w=32, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def _mask(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _data(dataset, tmp_path, manual_dir, fold=-1, min_pixels=4):
  return ml_collections.ConfigDict(dict(dataset=dataset, data_dir=str(tmp_path / 'tfds'),
                                        manual_dir=str(manual_dir), fold=fold, min_pixels=min_pixels))


def _labels(split_data):
  return [transforms.decode_image(split_data.source[i]['label'], 'x') for i in range(len(split_data.source))]


# PASCAL-5i ------------------------------------------------------------------------------------

def _pascal_tree(root, corrupt=None):
  """80 images: 40 train, 40 val; image i holds class i % 20 + 1 (and a 255 border)."""
  ids = [f'2008_{i:06d}' for i in range(80)]
  for i, name in enumerate(ids):
    _image(os.path.join(root, 'JPEGImages', f'{name}.jpg'), fmt='JPEG')
    label = np.zeros((24, 32), np.uint8)
    label[4:16, 4:20] = i % 20 + 1
    label[3, 3:21] = 255
    _mask(os.path.join(root, 'SegmentationClassAug', f'{name}.png'), label)
  if corrupt:
    with open(os.path.join(root, 'JPEGImages', f'{ids[corrupt]}.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff garbage, not a jpeg')
  os.makedirs(os.path.join(root, 'ImageSets/Segmentation'))
  with open(os.path.join(root, 'ImageSets/Segmentation/val.txt'), 'w') as f:
    f.write('\n'.join(ids[40:]) + '\n')
  return ids


@pytest.fixture(scope='module')
def pascal(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('pascal')
  _pascal_tree(tmp / 'VOC2012', corrupt=5)
  return tmp


def test_pascal_folds_classes_and_ignore_label(pascal):
  test = datasets.load_split(_data('pascal5i', pascal, pascal / 'VOC2012', fold=1), 'val', training=False)
  assert [pascal5i.CLASS_NAMES[c - 1] for c in test.classes] == ['bus', 'car', 'cat', 'chair', 'cow']
  assert len(test.source) == 40
  assert all(255 in label for label in _labels(test))  # The boundary stays ignore.
  train = datasets.load_split(_data('pascal5i', pascal, pascal / 'VOC2012', fold=1), 'train', training=True)
  assert set(train.classes) == set(range(1, 21)) - {6, 7, 8, 9, 10}
  sampler = episodes.EpisodeSampler(train.index, train.classes, shot=1, seed=0)
  drawn = {sampler.episode(step, i).class_id for step in range(50) for i in range(4)}
  assert drawn and not drawn & {6, 7, 8, 9, 10}  # No test class leaks into training episodes.


def test_pascal_corrupt_image_is_skipped_and_reported(pascal, caplog):
  data = _data('pascal5i', pascal, pascal / 'VOC2012')
  train = datasets.load_split(data, 'train', training=True)
  assert len(train.source) == 39  # 40 train images, one corrupt
  builder = datasets.load_raw_builder('pascal5i', data.data_dir, None)  # Built: no manual dir needed.
  with open(os.path.join(os.fspath(builder.data_dir), 'build_report.json')) as f:
    report = json.load(f)
  assert report['train']['built'] == 39 and len(report['train']['skipped_corrupt']) == 1
  assert '2008_000005.jpg' in report['train']['skipped_corrupt'][0]


def test_missing_or_half_extracted_manual_dir_names_the_path(tmp_path):
  with pytest.raises(raw.RawDataError, match=r'missing .*nowhere.*host\.robots\.ox\.ac\.uk'):
    datasets.load_split(_data('pascal5i', tmp_path, tmp_path / 'nowhere'), 'val', training=False)
  root = tmp_path / 'VOC2012'
  ids = _pascal_tree(root)
  os.remove(root / 'JPEGImages' / f'{ids[50]}.jpg')  # Listed in val.txt, never extracted.
  with pytest.raises(raw.RawDataError, match=f'missing .*{ids[50]}.jpg.*half-extracted'):
    datasets.load_split(_data('pascal5i', tmp_path, root), 'val', training=False)
  assert not datasets.RAW_BUILDERS['pascal5i'](data_dir=str(tmp_path / 'tfds')).is_prepared()


# COCO-20i -------------------------------------------------------------------------------------

def test_coco_polygons_rle_crowd_and_interleaved_folds(tmp_path):
  pytest.importorskip('pycocotools')
  from pycocotools import mask as mask_utils
  root = tmp_path / 'coco'
  cat_ids = [c for c in range(1, 91) if c not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
  assert len(cat_ids) == 80
  images, anns = [], []
  for split in ('train', 'val'):
    images, anns = [], []
    for i in range(8):
      name = f'COCO_{split}2014_{i:012d}.jpg'
      _image(str(root / f'{split}2014' / name), 20, 30, fmt='JPEG')
      images.append({'id': i + 1, 'file_name': name, 'height': 20, 'width': 30})
      cat = cat_ids[(i * 4) % 80]  # classes 1, 5, 9, ... : fold 0's test classes
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': cat, 'iscrowd': 0,
                   'segmentation': [[2, 2, 14, 2, 14, 12, 2, 12]], 'area': 120, 'bbox': [2, 2, 12, 10]})
      m = np.zeros((20, 30), np.uint8, order='F')
      m[14:18, 20:28] = 1
      rle = mask_utils.encode(m)
      rle['counts'] = rle['counts'].decode()
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': cat_ids[1], 'iscrowd': 0,
                   'segmentation': rle, 'area': 32, 'bbox': [20, 14, 8, 4]})
      anns.append({'id': len(anns) + 1, 'image_id': i + 1, 'category_id': cat_ids[2], 'iscrowd': 1,
                   'segmentation': {'size': [20, 30], 'counts': [600 - 40, 40]}, 'area': 40,
                   'bbox': [0, 0, 1, 1]})
    os.makedirs(root / 'annotations', exist_ok=True)
    with open(root / 'annotations' / f'instances_{split}2014.json', 'w') as f:
      json.dump({'images': images, 'annotations': anns,
                 'categories': [{'id': c, 'name': f'c{c}'} for c in cat_ids]}, f)
  data = _data('coco20i', tmp_path, root, fold=0)
  test = datasets.load_split(data, 'val', training=False)
  assert test.classes == tuple(range(1, 81, 4))
  first = next(i for i in range(len(test.source))
               if test.source[i]['name'].endswith(b'000000000000.jpg'))  # records are shuffled
  label = transforms.decode_image(test.source[first]['label'], 'x')
  assert label[5, 5] == 1 and label[15, 22] == 2  # polygon of class 1, RLE of class 2
  assert label[19, 29] == 255  # the crowd region (the last 40 pixels in column-major order)
  train = datasets.load_split(data, 'train', training=True)
  assert not set(train.classes) & set(range(1, 81, 4)) and len(train.classes) == 60


# FSS-1000 -------------------------------------------------------------------------------------

def test_fss_class_split_and_each_query_protocol(tmp_path):
  root = tmp_path / 'fss'
  for c in range(25):
    for n in range(1, 4):
      _image(str(root / f'class{c:03d}' / f'{n}.jpg'), 16, 16, fmt='JPEG')
      m = np.zeros((16, 16), np.uint8)
      m[2:12, 2:12] = 255
      _mask(str(root / f'class{c:03d}' / f'{n}.png'), m)
  data = _data('fss1000', tmp_path, root)
  test = datasets.load_split(data, 'test', training=False)
  assert test.classes == tuple(range(20, 26))  # positions 19..24 of 25: the last 24%
  assert datasets.load_split(data, 'train', training=True).classes == tuple(range(1, 14))
  assert set(np.unique(_labels(test)[0])) == {0, 1}  # binarised at 128
  sampler = episodes.EpisodeSampler(test.index, test.classes, shot=1, seed=0)
  eps = sampler.test_list(None, order='each_query')
  assert len(eps) == 18 and len({e.query for e in eps}) == 18
  assert all(e.query not in e.supports for e in eps)


# Deepglobe ------------------------------------------------------------------------------------

def test_deepglobe_tiles_and_filter(tmp_path, monkeypatch):
  monkeypatch.setattr(deepglobe, 'TILE', 8)  # 6 x 6 tiles of 8 px: 48 px images
  root = tmp_path / 'deepglobe'
  colours = [(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
  mask = np.zeros((48, 48, 3), np.uint8)
  mask[:] = colours[1]  # agriculture everywhere ...
  mask[:, :24] = colours[3]  # ... forest on the left half
  mask[:4, :4] = colours[4]  # water in the top-left corner: 25% of tile (0, 0)
  mask[8, 8] = colours[0]  # one urban pixel in tile (1, 1): 1/64 <= 4.8%, dropped
  mask[16:24, 20:24] = (10, 10, 10)  # unknown in tile (2, 2) -> 255, a region of 50%
  _image(str(root / 'train' / '100_sat.jpg'), 48, 48, fmt='JPEG')
  _mask(str(root / 'train' / '100_mask.png'), mask)
  test = datasets.load_split(_data('deepglobe', tmp_path, root), 'test', training=False)
  # Every tile has one colour except (0, 0): forest + 25% water, kept; (1, 1): one urban
  # pixel (1.6% <= 4.8%), dropped; (2, 2): forest + 50% unknown (255), kept.
  labels = _labels(test)
  assert len(labels) == 2 and all(lb.shape == (8, 8) for lb in labels)
  assert sorted(tuple(np.unique(lb)) for lb in labels) == [(4, 5), (4, 255)]
  assert all(test.source[i]['name'].endswith(b'100_sat.jpg') for i in range(2))


# ISIC 2018, Chest X-ray, SUIM -----------------------------------------------------------------

def test_isic_diagnosis_classes(tmp_path):
  root = tmp_path / 'isic'
  rows = [('ISIC_0000001', 'NV'), ('ISIC_0000002', 'NV'), ('ISIC_0000003', 'MEL'),
          ('ISIC_0000004', 'MEL'), ('ISIC_0000005', 'BKL'), ('ISIC_0000006', 'BKL'),
          ('ISIC_0000007', 'BCC')]
  for name, _ in rows:
    _image(str(root / 'ISIC2018_Task1-2_Training_Input' / f'{name}.jpg'), 16, 16, fmt='JPEG')
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    _mask(str(root / 'ISIC2018_Task1_Training_GroundTruth' / f'{name}_segmentation.png'), m)
  os.makedirs(root / 'ISIC2018_Task3_Training_GroundTruth')
  cols = ['MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC']
  with open(root / 'ISIC2018_Task3_Training_GroundTruth' / 'ISIC2018_Task3_Training_GroundTruth.csv',
            'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['image', *cols])
    for name, dx in rows:
      w.writerow([name, *('1.0' if c == dx else '0.0' for c in cols)])
  data = _data('isic2018', tmp_path, root)
  test = datasets.load_split(data, 'test', training=False)
  assert test.classes == (1, 2, 3) and len(test.source) == 6  # BCC left out
  by_class = {c: sorted(os.path.basename(test.source[int(i)]['name'].decode()) for i in v)
              for c, v in test.index.items()}
  assert by_class == {1: ['ISIC_0000001.jpg', 'ISIC_0000002.jpg'], 2: ['ISIC_0000003.jpg', 'ISIC_0000004.jpg'],
                      3: ['ISIC_0000005.jpg', 'ISIC_0000006.jpg']}
  assert all(test.source[i]['binary'] for i in range(6))


def test_chest_xray_mask_names_and_missing_masks(tmp_path):
  root = tmp_path / 'chest'
  for name, mask in (('CHNCXR_0001_0', 'CHNCXR_0001_0_mask.png'), ('CHNCXR_0002_1', 'CHNCXR_0002_1_mask.png'),
                     ('MCUCXR_0001_0', 'MCUCXR_0001_0.png'), ('CHNCXR_0003_0', None)):
    Image.fromarray(RNG.integers(0, 255, (16, 16), dtype=np.uint8)).save(
        _path(root / 'CXR_png' / f'{name}.png'))
    if mask:
      m = np.zeros((16, 16), np.uint8)
      m[2:14, 2:7] = 255
      _mask(str(root / 'masks' / mask), m)
  data = _data('chest_xray', tmp_path, root)
  test = datasets.load_split(data, 'test', training=False)
  assert len(test.source) == 3 and test.classes == (1,)
  builder = datasets.load_raw_builder('chest_xray', data.data_dir, None)
  with open(os.path.join(os.fspath(builder.data_dir), 'build_report.json')) as f:
    assert '1 images without a mask' in json.load(f)['test']['notes'][0]


def _path(p):
  os.makedirs(os.path.dirname(p), exist_ok=True)
  return str(p)


def test_suim_colour_codes_and_empty_masks(tmp_path):
  root = tmp_path / 'suim'
  codes = {'FV': (255, 255, 0), 'HD': (0, 0, 255), 'PF': (0, 255, 0), 'RI': (255, 0, 255),
           'RO': (255, 0, 0), 'SR': (255, 255, 255), 'WR': (0, 255, 255)}
  for part, names in (('train_val', ['FV', 'HD', 'PF', 'RI']), ('TEST', ['RO', 'SR', 'WR', None])):
    for i, name in enumerate(names):
      _image(str(root / part / 'images' / f'd_r_{i}_.jpg'), 16, 16, fmt='JPEG')
      m = np.zeros((16, 16, 3), np.uint8)
      if name:
        m[4:12, 4:12] = np.asarray(codes[name]) * 0.9  # 229 >= 128: thresholded, not exact
      Image.fromarray(m).save(_path(root / part / 'masks' / f'd_r_{i}_.bmp'))
  test = datasets.load_split(_data('suim', tmp_path, root), 'test', training=False)
  assert test.classes == tuple(range(1, 8)) and len(test.source) == 7  # the empty mask dropped
  for i in range(7):
    record = test.source[i]
    label = transforms.decode_image(record['label'], 'x')
    assert set(np.unique(label)) == {0, int(record['classes'][0])}


def test_pfenet_protocol_scores_pascal_at_the_original_resolution(pascal, tfds_dir):
  import jax

  from mmtjax import eval_lib, parallel
  from mmtjax.data import protocols
  from mmtjax.models import get_model
  from mmtjax.state import create_train_state
  from tests.conftest import tiny_config
  config = tiny_config(tfds_dir, 'model=mmnet,fold=0')
  config.data.update(dict(dataset='pascal5i', data_dir=str(pascal / 'tfds'), manual_dir=str(pascal / 'VOC2012'),
                          protocol='pfenet'))
  split = datasets.load_split(config.data, 'val', training=False)
  model = get_model(config, axis_name=parallel.AXIS)
  state, _ = create_train_state(model, config)
  short = protocols.Protocol('pfenet', 6, 321, 40, 'longer_side_pad', original_resolution=True)
  report = eval_lib.evaluate_variables(model, parallel.replicate(parallel.eval_variables(jax.device_get(state))),
                                       config, split, protocol=short)
  result = report['results']['mmnet']
  assert report['protocol'] == 'pfenet' and result['episodes'] == 6
  assert set(result['per_class']) <= {'1', '2', '3', '4', '5'}
  assert 0.0 <= result['fb_iou'] <= 100.0
