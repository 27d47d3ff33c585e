"""Each raw-data builder on a small fake tree that copies its real download.

The trees follow the layouts written down (with their sources) in each
builder's docstring: the archives' folder names and nesting, real file names
(2007_000033, ISIC_0000000, CHNCXR_0001_0_mask, d_r_5_, FSS-1000's class
names) and real mask encodings (grey, palette, 1-bit, RGB colour codes,
JPEG-compressed masks whose values are near but not exactly 0/255).
"""

import csv
import io
import json
import logging
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmtjax.commands import episodes as episodes_cmd
from mmtjax.data import datasets, episodes, transforms
from mmtjax.data.builders import construction, fss1000, pascal5i, raw
from mmtjax.errors import UserError

RNG = np.random.default_rng(0)


def _image(path, h=24, w=32, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, format=fmt)


def _mask(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _jpeg_noisy(array):
  """A 0/255 mask as it comes back from JPEG: values near, not exactly, 0 and 255."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buf, format='JPEG', quality=75)
  return np.asarray(Image.open(buf))


def _data(dataset, tmp_path, manual_dir, fold=-1, min_pixels=4, **fields):
  return ml_collections.ConfigDict(dict(dataset=dataset, data_dir=str(tmp_path / 'tfds'),
                                        manual_dir=str(manual_dir), fold=fold, min_pixels=min_pixels, **fields))


def _labels(split_data):
  return [transforms.decode_image(split_data.source[i]['label'], 'x') for i in range(len(split_data.source))]


def _report(data):
  builder = datasets.load_raw_builder(data.dataset, data.data_dir, data.manual_dir)
  with open(os.path.join(os.fspath(builder.data_dir), 'build_report.json')) as f:
    return json.load(f)


def _names(split_data, cls):
  return sorted(split_data.source[int(i)]['name'].decode() for i in split_data.index[cls])


# Masks in any mode ----------------------------------------------------------------------------

_SQUARE = np.zeros((16, 16), np.uint8)
_SQUARE[4:12, 2:10] = 255


def _save_mode(path, mode):
  fg = _SQUARE > 0
  if mode == '1':
    Image.fromarray(fg).convert('1').save(path)  # 1-bit, as PH2's BMP masks
  elif mode == 'L':
    Image.fromarray(_SQUARE).save(path)
  elif mode == 'L01':
    Image.fromarray(fg.astype(np.uint8)).save(path)  # 0/1 grey
  elif mode == 'P':
    im = Image.fromarray(fg.astype(np.uint8), 'L').convert('P')
    im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)  # VOC's colour of index 1
    im.save(path)
  elif mode == 'RGB':
    Image.fromarray(np.stack([_SQUARE, _SQUARE // 2, _SQUARE], -1)).save(path)
  elif mode == 'RGBA':  # transparent background, opaque white foreground
    a = np.zeros((16, 16, 4), np.uint8)
    a[fg] = 255
    a[~fg, :3] = 200  # colour under full transparency must not count
    Image.fromarray(a).save(path)
  elif mode == 'alpha_only':  # black everywhere, the mask drawn in the alpha channel
    a = np.zeros((16, 16, 4), np.uint8)
    a[..., 3] = _SQUARE
    Image.fromarray(a).save(path)
  elif mode == 'I;16':
    Image.fromarray(fg.astype(np.uint16) * 65535).save(path)
  elif mode == 'jpeg':
    Image.fromarray(_jpeg_noisy(_SQUARE)).save(path)


@pytest.mark.parametrize('mode', ['1', 'L', 'L01', 'P', 'RGB', 'RGBA', 'alpha_only', 'I;16', 'jpeg'])
def test_binary_masks_decode_in_every_mode(tmp_path, mode):
  path = str(tmp_path / ('m.bmp' if mode == '1' else 'm.png'))
  _save_mode(path, mode)
  mask = raw.binary_mask(path)
  np.testing.assert_array_equal(mask.values, (_SQUARE > 0).astype(np.uint8))
  assert mask.issues == ()


def test_odd_masks_are_noted(tmp_path):
  path = str(tmp_path / 'ids.png')
  Image.fromarray((_SQUARE > 0).astype(np.uint8) * 3).save(path)  # a class-id map, not a binary mask
  mask = raw.binary_mask(path)
  assert not mask.values.any() and 'below' not in mask.issues[0] and '< 128' in mask.issues[0]
  Image.fromarray(RNG.integers(0, 255, (16, 16), dtype=np.uint8)).save(path)  # a photo
  assert 'neither near 0 nor near 255' in raw.binary_mask(path).issues[0]
  voc = np.zeros((16, 16), np.uint8)
  voc[2:5, 2:5] = 15
  voc[6:9, 6:9] = 40  # no such VOC class
  Image.fromarray(voc).save(path)
  mask = raw.class_map(path, 20)
  assert set(np.unique(mask.values)) == {0, 15, 255} and 'outside 0-20' in mask.issues[0]


# PASCAL-5i ------------------------------------------------------------------------------------

def _pascal_tree(root, corrupt=None, n=80):
  """VOCdevkit/VOC2012 under `root`: n images named as VOC's (2007_000033 ...), 40 of them in
  val.txt; image i holds class i % 20 + 1 and a 255 boundary. SegmentationClassAug masks are
  8-bit grey; VOC's own SegmentationClass (palette) is present for val images, as in the tar."""
  voc = os.path.join(root, 'VOCdevkit', 'VOC2012')
  ids = [f'{2007 + i % 5}_{33 + 7 * i:06d}' for i in range(n)]
  palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [64] * (3 * 253)
  for i, name in enumerate(ids):
    _image(os.path.join(voc, 'JPEGImages', f'{name}.jpg'), fmt='JPEG')
    label = np.zeros((24, 32), np.uint8)
    label[4:16, 4:20] = i % 20 + 1
    label[3, 3:21] = 255
    _mask(os.path.join(voc, 'SegmentationClassAug', f'{name}.png'), label)
    if i >= n // 2:
      im = Image.fromarray(label, 'L').convert('P')
      im.putpalette(palette)
      os.makedirs(os.path.join(voc, 'SegmentationClass'), exist_ok=True)
      im.save(os.path.join(voc, 'SegmentationClass', f'{name}.png'))
  if corrupt is not None:
    with open(os.path.join(voc, 'JPEGImages', f'{ids[corrupt]}.jpg'), 'wb') as f:
      f.write(b'\xff\xd8\xff garbage, not a jpeg')
  os.makedirs(os.path.join(voc, 'ImageSets', 'Segmentation'))
  os.makedirs(os.path.join(voc, 'Annotations'))
  with open(os.path.join(voc, 'ImageSets', 'Segmentation', 'val.txt'), 'w') as f:
    f.write('\n'.join(ids[n // 2:]) + '\n')
  return ids


@pytest.fixture(scope='module')
def pascal(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('pascal')
  _pascal_tree(tmp / 'download', corrupt=5)
  return tmp


def test_pascal_builds_from_the_folder_the_tar_was_unpacked_into(pascal, caplog):
  caplog.set_level(logging.INFO)
  data = _data('pascal5i', pascal, pascal / 'download', fold=1)
  test = datasets.load_split(data, 'val', training=False)
  assert any('VOCdevkit/VOC2012' in r.getMessage() and 'data root' in r.getMessage() for r in caplog.records)
  assert [pascal5i.CLASS_NAMES[c - 1] for c in test.classes] == ['bus', 'car', 'cat', 'chair', 'cow']
  assert len(test.source) == 40
  assert all(255 in label for label in _labels(test))  # The boundary stays ignore.
  train = datasets.load_split(data, 'train', training=True)
  assert set(train.classes) == set(range(1, 21)) - {6, 7, 8, 9, 10}
  sampler = episodes.EpisodeSampler(train.index, train.classes, shot=1, seed=0)
  drawn = {sampler.episode(step, i).class_id for step in range(50) for i in range(4)}
  assert drawn and not drawn & {6, 7, 8, 9, 10}  # No test class leaks into training episodes.
  report = _report(data)
  assert report['train']['built'] == 39 and len(report['train']['skipped_corrupt']) == 1
  assert '2007_000068.jpg' in report['train']['skipped_corrupt'][0]
  assert report['val']['root'].endswith(os.path.join('VOCdevkit', 'VOC2012'))
  assert report['val']['per_class']['bus'] == 2


def test_missing_or_half_extracted_download_names_what_is_missing(tmp_path):
  with pytest.raises(raw.RawDataError, match=r'missing .*nowhere.*host\.robots\.ox\.ac\.uk'):
    datasets.load_split(_data('pascal5i', tmp_path, tmp_path / 'nowhere'), 'val', training=False)
  root = tmp_path / 'dl'
  ids = _pascal_tree(root, n=40)
  aug = root / 'VOCdevkit' / 'VOC2012' / 'SegmentationClassAug'
  os.rename(aug, tmp_path / 'aside')  # The SBD masks were never added.
  with pytest.raises(raw.RawDataError, match=r'looked for a folder holding \{JPEGImages, SegmentationClassAug, '
                     r'ImageSets/Segmentation/val.txt\}; nearest match: .*VOC2012 has JPEGImages, '
                     r'ImageSets/Segmentation/val.txt but lacks SegmentationClassAug'):
    datasets.load_split(_data('pascal5i', tmp_path, root), 'val', training=False)
  os.rename(tmp_path / 'aside', aug)
  os.remove(root / 'VOCdevkit' / 'VOC2012' / 'JPEGImages' / f'{ids[30]}.jpg')  # in val.txt, not extracted
  with pytest.raises(raw.RawDataError, match=f'missing .*{ids[30]}.jpg.*half-extracted'):
    datasets.load_split(_data('pascal5i', tmp_path, root), 'val', training=False)
  assert not construction.new_builder(datasets.get('pascal5i'), data_dir=str(tmp_path / 'tfds')).is_prepared()
  # A build that stops leaves nothing half-written in the data dir.
  left = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / 'tfds') for f in fs]
  assert not left, left


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

def test_fss_published_lists():
  lists = {s: fss1000.published_classes(s) for s in fss1000.SPLITS}
  assert [len(v) for v in lists.values()] == [520, 240, 240]
  assert not set(lists['test']) & (set(lists['train']) | set(lists['val']))
  assert fss1000.class_ids('test')[lists['test'][0]] == 761 and max(fss1000.class_ids('test').values()) == 1000


def _fss_tree(root, classes, n=3):
  for k, c in enumerate(classes):
    for i in range(1, n + 1):
      _image(str(root / c / f'{i}.jpg'), 16, 16, fmt='JPEG')
      m = np.zeros((16, 16), np.uint8)
      m[2:12, 2:12] = 255
      if k % 2:  # some masks as RGB PNGs, some as JPEG-noisy grey
        _mask(str(root / c / f'{i}.png'), np.stack([m] * 3, -1))
      else:
        _mask(str(root / c / f'{i}.png'), _jpeg_noisy(m))


def test_fss_splits_by_the_published_lists(tmp_path):
  test_classes = fss1000.published_classes('test')
  train_classes = fss1000.published_classes('train')
  picked = [test_classes[0], test_classes[5], train_classes[0], 'not_a_fss_class']
  _fss_tree(tmp_path / 'dl' / 'fewshot_data', picked)
  data = _data('fss1000', tmp_path, tmp_path / 'dl')
  test = datasets.load_split(data, 'test', training=False)
  ids = fss1000.class_ids('test')
  assert test.classes == (ids[test_classes[0]], ids[test_classes[5]])
  assert _names(test, ids[test_classes[0]])[0].endswith(f'{test_classes[0]}/1.jpg')
  assert set(np.unique(_labels(test)[0])) == {0, 1}
  assert datasets.load_split(data, 'train', training=True).classes == (1,)
  report = _report(data)
  assert '238 of the 240 classes of the published \'test\' list have no folder' in report['test']['notes'][0]
  with pytest.raises(UserError, match=r"split 'val' of fss1000 is empty: none of the 240 classes of "
                     r"FSS-1000's published 'val' list .*found 4 class folders: 1 in the 'train' list, 0 in "
                     r"the 'val' list, 2 in the 'test' list"):
    datasets.load_split(data, 'val', training=False)
  sampler = episodes.EpisodeSampler(test.index, test.classes, shot=1, seed=0)
  eps = sampler.test_list(None, order='each_query')
  assert len(eps) == 6 and all(e.query not in e.supports for e in eps)


def test_fss_tree_without_fss_classes_says_so(tmp_path):
  _fss_tree(tmp_path / 'fss', ['class000', 'class001'])
  with pytest.raises(raw.RawDataError, match='no folder .* holds class folders named as in FSS-1000'):
    datasets.load_split(_data('fss1000', tmp_path, tmp_path / 'fss'), 'test', training=False)


# Deepglobe ------------------------------------------------------------------------------------

_AGRI, _URBAN, _FOREST, _WATER = (255, 255, 0), (0, 255, 255), (0, 255, 0), (0, 0, 255)


def test_deepglobe_raw_tiles_follow_patnets_steps(tmp_path):
  """48 px images: a 6 x 6 grid of 8 px tiles (PATNet: 2448 px, 408 px tiles)."""
  root = tmp_path / 'archive' / 'train'
  mask = np.zeros((48, 48, 3), np.uint8)
  mask[:] = _AGRI  # agriculture everywhere ...
  mask[:, :24] = _FOREST  # ... forest on the left half
  mask[:4, :4] = _WATER  # water: 25% of tile (0, 0): kept, examples for forest and water
  mask[8, 8] = _URBAN  # one urban pixel in tile (1, 1): 1.6% <= 4.8%, dropped
  mask[16:24, 20:24] = (0, 0, 0)  # unknown: 50% of tile (2, 2): kept, an example for forest only
  mask[0:8, 40:44] = _URBAN
  mask[0, 47] = (254, 255, 0)  # a stray off-palette pixel in tile (0, 5): a colour of its own, dropped
  _image(str(root / '100694_sat.jpg'), 48, 48, fmt='JPEG')
  _mask(str(root / '100694_mask.png'), mask)
  os.makedirs(root.parent / 'valid')
  _image(str(root.parent / 'valid' / '1005_sat.jpg'), 48, 48, fmt='JPEG')  # no mask: not used
  data = _data('deepglobe', tmp_path, tmp_path / 'archive')
  test = datasets.load_split(data, 'test', training=False)
  keys = sorted(test.source[i]['name'].decode() for i in range(len(test.source)))
  assert len(keys) == 3 and all(k.endswith('100694_sat.jpg') for k in keys)
  assert test.classes == (4, 5)  # forest, water
  masks = sorted((int(test.source[i]['classes'][0]), int(_labels(test)[i].sum())) for i in range(3))
  assert masks == [(4, 32), (4, 48), (5, 16)]
  assert _report(data)['test']['per_class'] == {'forest': 2, 'water': 1}


def test_deepglobe_patnet_preprocessed_layout(tmp_path):
  base = tmp_path / 'CDFSL' / 'Deepglobe'
  for c in range(1, 7):
    for t in range(2 if c != 3 else 1):
      stem = f'{1000 + 10 * c + t}_sat_{t}{c}'
      _image(str(base / str(c) / 'test' / 'origin' / f'{stem}.jpg'), 16, 16, fmt='JPEG')
      m = np.zeros((16, 16, 3), np.uint8)
      m[:8] = 255
      _mask(str(base / str(c) / 'test' / 'groundtruth' / f'{stem}.png'), m)
  data = _data('deepglobe', tmp_path, tmp_path / 'CDFSL')
  test = datasets.load_split(data, 'test', training=False)
  assert test.classes == (1, 2, 3, 4, 5, 6) and len(test.source) == 11
  assert _names(test, 3) == [str(base / '3' / 'test' / 'origin' / '1030_sat_03.jpg')]
  assert _report(data)['test']['per_class']['rangeland'] == 1
  assert all(set(np.unique(lb)) == {0, 1} for lb in _labels(test))


# ISIC 2018 --------------------------------------------------------------------------------------

_ISIC = [('ISIC_0000000', 'nevus'), ('ISIC_0000001', 'nevus'), ('ISIC_0000003', 'nevus'),
         ('ISIC_0000004', 'melanoma'), ('ISIC_0000013', 'melanoma'), ('ISIC_0000014', 'seborrheic_keratosis'),
         ('ISIC_0000015', 'seborrheic_keratosis')]


def _isic_tree(root, sorted_by_class=False, extra=('ISIC_0000002',)):
  images = root / 'ISIC2018_Task1-2_Training_Input'
  for name, cls in [*_ISIC, *((e, None) for e in extra)]:
    if sorted_by_class and cls is None:
      continue
    sub = images / str(1 + ['nevus', 'melanoma', 'seborrheic_keratosis'].index(cls)) if sorted_by_class else images
    _image(str(sub / f'{name}.jpg'), 16, 16, fmt='JPEG')
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    _mask(str(root / 'ISIC2018_Task1_Training_GroundTruth' / f'{name}_segmentation.png'), m)
  for f in ('ATTRIBUTION.txt', 'LICENSE.txt'):
    (images / f).write_text('x')


def _class_csv(path, rows):
  with open(path, 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['ID', 'Class'])
    w.writerows(rows)


def test_isic_with_patnets_class_list(tmp_path):
  root = tmp_path / 'ISIC'
  _isic_tree(root)
  _class_csv(root / 'class_id.csv', [*_ISIC, ('ISIC_0016072', 'nevus')])  # one listed id not downloaded
  data = _data('isic2018', tmp_path, tmp_path)
  test = datasets.load_split(data, 'test', training=False)
  assert test.classes == (1, 2, 3) and len(test.source) == 7
  assert [os.path.basename(n) for n in _names(test, 2)] == ['ISIC_0000004.jpg', 'ISIC_0000013.jpg']
  report = _report(data)['test']
  assert report['per_class'] == {'nevus': 3, 'melanoma': 2, 'seborrheic_keratosis': 2}
  assert '1 of 8 images have no class' in report['notes'][0] and '1 of its 8 ids have no image' in report['notes'][0]


def test_isic_sorted_class_folders_and_bad_class_lists(tmp_path):
  _isic_tree(tmp_path / 'sorted' / 'ISIC', sorted_by_class=True)
  test = datasets.load_split(_data('isic2018', tmp_path / 'a', tmp_path / 'sorted'), 'test', training=False)
  assert {c: len(v) for c, v in test.index.items()} == {1: 3, 2: 2, 3: 2}
  flat = tmp_path / 'flat'
  _isic_tree(flat)
  with pytest.raises(raw.RawDataError, match="not sorted into the class folders 1/2/3 and no class_id.csv"):
    datasets.load_split(_data('isic2018', tmp_path / 'b', flat), 'test', training=False)
  _class_csv(tmp_path / 'other.csv', [('ISIC_0024306', 'nevus'), ('ISIC_0024307', 'melanoma')])
  with pytest.raises(raw.RawDataError, match=r'other.csv lists 2 images \(first: ISIC_0024306\), none of which'):
    datasets.load_split(_data('isic2018', tmp_path / 'c', flat, class_list=str(tmp_path / 'other.csv')), 'test',
                        training=False)
  assert not os.path.exists(tmp_path / 'c' / 'tfds' / 'isic2018' / '1.1.0')


# Chest X-ray, SUIM ------------------------------------------------------------------------------

def test_chest_xray_kaggle_folder_with_a_space(tmp_path):
  root = tmp_path / 'archive' / 'Lung Segmentation'
  for name, mask in (('CHNCXR_0001_0', 'CHNCXR_0001_0_mask.png'), ('CHNCXR_0002_1', 'CHNCXR_0002_1_mask.png'),
                     ('MCUCXR_0001_0', 'MCUCXR_0001_0.png'), ('CHNCXR_0003_0', None)):
    _mask(str(root / 'CXR_png' / f'{name}.png'), RNG.integers(0, 255, (16, 16)))
    if mask:
      m = np.zeros((16, 16), np.uint8)
      m[2:14, 2:7] = 255
      _mask(str(root / 'masks' / mask), m)
  _mask(str(root / 'test' / 'CHNCXR_0100_0.png'), RNG.integers(0, 255, (16, 16)))
  data = _data('chest_xray', tmp_path, tmp_path / 'archive')
  test = datasets.load_split(data, 'test', training=False)
  assert len(test.source) == 3 and test.classes == (1,)
  assert '1 images without a mask' in _report(data)['test']['notes'][0]


def test_suim_colour_codes_and_empty_masks(tmp_path):
  root = tmp_path / 'SUIM'
  codes = {'FV': (255, 255, 0), 'HD': (0, 0, 255), 'PF': (0, 255, 0), 'RI': (255, 0, 255),
           'RO': (255, 0, 0), 'SR': (255, 255, 255), 'WR': (0, 255, 255)}
  names = {'train_val': [('d_r_5_', 'FV'), ('f_r_1007_', 'HD'), ('w_r_24_', 'PF'), ('n_l_10_', 'RI')],
           'TEST': [('d_r_122_', 'RO'), ('f_r_1289_', 'SR'), ('w_r_47_', 'WR'), ('n_l_21_', None)]}
  for part, items in names.items():
    for name, cls in items:
      _image(str(root / part / 'images' / f'{name}.jpg'), 16, 16, fmt='JPEG')
      m = np.zeros((16, 16, 3), np.uint8)
      if cls:
        m[4:12, 4:12] = np.asarray(codes[cls]) * 0.9  # 229 >= 128: thresholded, not exact
        m[4, 4:12] = (200, 30, 140)  # an off-palette border, as in the real train_val masks
      os.makedirs(root / part / 'masks', exist_ok=True)
      Image.fromarray(m).save(root / part / 'masks' / f'{name}.bmp')
  test = datasets.load_split(_data('suim', tmp_path, tmp_path), 'test', training=False)
  assert test.classes == tuple(range(1, 8)) and len(test.source) == 7  # the empty mask dropped
  for i in range(7):
    record = test.source[i]
    label = transforms.decode_image(record['label'], 'x')
    present = set(np.unique(label).tolist()) - {0}
    assert present == set(record['classes'].tolist()) and 4 in present  # the off-palette border: RI (101)


# Your own data (folder) --------------------------------------------------------------------------

def _folder_tree(root, classes=('cat', 'dog', 'fox'), n=4):
  for c in classes:
    for i in range(n):
      ext = ('jpg', 'png')[i % 2]
      _image(str(root / c / f'img{i}.{ext}'), 20, 28, fmt='JPEG' if ext == 'jpg' else None)
      m = np.zeros((20, 28), np.uint8)
      m[3:15, 5:20] = 255
      _mask(str(root / c / f'img{i}_mask.png'), m if i % 2 else (m > 0))  # 0/255 and 1-bit-as-bool


def test_folder_builder_and_its_bad_input(tmp_path, capsys):
  root = tmp_path / 'mine'
  _folder_tree(root)
  _image(str(root / 'cat' / 'orphan.jpg'), 20, 28, fmt='JPEG')  # no mask
  _image(str(root / 'dog' / 'small.jpg'), 20, 28, fmt='JPEG')
  _mask(str(root / 'dog' / 'small_mask.png'), np.ones((10, 10), np.uint8) * 255)  # another size
  (root / 'fox' / 'empty.jpg').write_bytes(b'')  # zero bytes
  _mask(str(root / 'fox' / 'empty_mask.png'), np.ones((20, 28), np.uint8) * 255)
  (root / 'fox' / 'text.jpg').write_text('not a picture')  # a text file named .jpg
  _mask(str(root / 'fox' / 'text_mask.png'), np.ones((20, 28), np.uint8) * 255)
  _image(str(root / 'fox' / 'blank.jpg'), 20, 28, fmt='JPEG')
  _mask(str(root / 'fox' / 'blank_mask.png'), np.zeros((20, 28), np.uint8))  # all zero
  data = _data('folder', tmp_path, root)
  split = datasets.load_split(data, 'train', training=True)  # no split folders: 'images' serves every name
  # One console line per kind of skipped file: its count, the first file and the report.
  lines = sorted(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning: '))
  where = f"build report: {tmp_path / 'tfds'}"
  assert len(lines) == 4 and all(where in ln for ln in lines), lines
  assert f"skipped 1 masks of another size than their image (first: {root / 'dog' / 'small.jpg'})" in ' '.join(lines)
  assert any(f"skipped 2 unreadable files (first: {root / 'fox'}" in ln for ln in lines)
  assert any(f"skipped 1 masks without foreground (dropped) (first: {root / 'fox' / 'blank.jpg'})" in ln for ln in lines)
  assert any("1 images without a <name>_mask file were skipped (first: " in ln for ln in lines)
  assert split.classes == (2, 3) and len(split.source) == 12  # fold 0 tests cat
  builder = datasets.load_raw_builder('folder', data.data_dir, data.manual_dir)
  assert builder.info.metadata['class_names'] == ['cat', 'dog', 'fox']
  report = _report(data)['images']
  assert len(report['skipped_corrupt']) == 3 and 'differ in size' in ' '.join(report['skipped_corrupt'])
  assert 'empty.jpg' in ' '.join(report['skipped_corrupt'])
  assert 'text.jpg: cannot decode' in ' '.join(report['skipped_corrupt']) and 'BytesIO' not in str(report)
  assert '1 images without a <name>_mask file' in report['notes'][0]
  with pytest.raises(raw.RawDataError, match='holds no class folders'):
    datasets.load_split(_data('folder', tmp_path, tmp_path / 'mine' / 'cat'), 'test', training=False)


def test_a_long_build_says_how_far_it_is(tmp_path, capsys, monkeypatch):
  from mmtjax import progress
  monkeypatch.setattr(progress, 'EVERY_S', 0.0)  # every file counts as "long" here
  root = tmp_path / 'mine'
  _folder_tree(root, n=2)
  datasets.load_split(_data('folder', tmp_path, root), 'train', training=True)
  lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('building folder/')]
  # Silent for the first file (the rate starts after it), then one line per file but the last.
  assert [ln.split(':')[1].split(',')[0].strip() for ln in lines] == ['2/6 files', '3/6 files', '4/6 files',
                                                                      '5/6 files'], lines
  assert all(' files/s, ETA ' in ln for ln in lines)


def test_a_folder_without_split_folders_is_few_shot_by_folds(tmp_path):
  """No test class in any training or validation episode; validation images never train."""
  from mmtjax.data.builders import folder
  from mmtjax.data.episodes import EpisodeSampler
  names = ('ant', 'bee', 'cat', 'dog', 'eel')
  _folder_tree(tmp_path / 'mine', classes=names, n=4)
  for fold in range(4):
    data = _data('folder', tmp_path, tmp_path / 'mine', fold=fold)
    train, val, test = (datasets.load_split(data, s, training=s == 'train') for s in ('train', 'val', 'test'))
    expected = {0: (1, 2), 1: (3,), 2: (4,), 3: (5,)}[fold]  # contiguous blocks, as PASCAL-5i's folds
    assert test.classes == expected and set(train.classes) == set(val.classes) == set(range(1, 6)) - set(expected)
    assert f'testing {", ".join(names[c - 1] for c in expected)}' in test.classes_note
    records = {c: {int(r) for r in train.index[c]} for c in train.classes}
    held = {c: {int(r) for r in val.index[c]} for c in val.classes}
    for c in train.classes:
      assert len(records[c]) == 3 and len(held[c]) == 1 and not records[c] & held[c]
    sampler = EpisodeSampler(train.index, train.classes, 1, seed=0)
    for i in range(50):
      e = sampler.episode(0, i)
      assert e.class_id not in expected
      assert {e.query, *e.supports} <= records[e.class_id]  # training images of a training class only
  with pytest.raises(UserError, match='5 classes make 4 folds: data.fold must be 0..3'):
    datasets.load_split(_data('folder', tmp_path, tmp_path / 'mine', fold=4), 'test', training=False)
  assert folder.fold_classes(3, 2) == (3,)
  _folder_tree(tmp_path / 'one', classes=('cat',), n=4)
  with pytest.raises(UserError, match=r'1 class\(es\) cannot be split into seen and unseen'):
    datasets.load_split(_data('folder', tmp_path, tmp_path / 'one'), 'train', training=True)
  # The same folder as the target of a model trained on other data: every class is a test class.
  target = datasets.test_data(ml_collections.ConfigDict(dict(
      dataset='mmtjax_shapes', test_dataset='folder', manual_dir=None, test_manual_dir=str(tmp_path / 'mine'),
      data_dir=str(tmp_path / 'tfds'), fold=-1, min_pixels=4)))
  assert datasets.load_split(target, 'test', training=False).classes == (1, 2, 3, 4, 5)


def test_split_folders_sharing_classes_with_train_are_a_warning(tmp_path, capsys):
  _folder_tree(tmp_path / 'd' / 'train', classes=('a', 'b'), n=2)
  _folder_tree(tmp_path / 'd' / 'test', classes=('b', 'c'), n=2)
  data = _data('folder', tmp_path, tmp_path / 'd')
  assert datasets.load_split(data, 'test', training=False).classes == (2, 3)
  lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith('building ')]
  assert len(lines) == 1 and lines[0].startswith('warning: folder: the test split shares 1 of its 2 classes '
                                                 'with train (b)'), lines
  with pytest.raises(UserError, match='has split folders, which choose the classes; data.fold must be -1'):
    datasets.load_split(_data('folder', tmp_path, tmp_path / 'd', fold=0), 'test', training=False)


def test_folder_split_folders_keep_class_ids(tmp_path):
  _folder_tree(tmp_path / 'd' / 'train', classes=('a', 'b'))
  _folder_tree(tmp_path / 'd' / 'test', classes=('c',))
  data = _data('folder', tmp_path, tmp_path / 'd')
  assert datasets.load_split(data, 'train', training=True).classes == (1, 2)
  assert datasets.load_split(data, 'test', training=False).classes == (3,)
  with pytest.raises(UserError, match=r"unknown split 'val' of folder; it has \['train', 'test'\]"):
    datasets.load_split(data, 'val', training=False)


# Dataset-aware defaults ------------------------------------------------------------------------

def test_choosing_a_dataset_picks_its_splits_and_protocol():
  from configs import default, patnet
  config = datasets.resolve(default.get_config('dataset=fss1000'), training=True)
  assert (config.data.train_split, config.data.val_split, config.data.test_split,
          config.data.protocol) == ('train', 'val', 'test', 'hsnet')
  config = datasets.resolve(patnet.get_config('target=chest_xray'), training=True)
  assert (config.data.dataset, config.data.train_split, config.data.fold) == ('pascal5i', 'train', -1)
  assert (datasets.test_data(config.data).dataset, config.data.test_split, config.data.protocol) == (
      'chest_xray', 'test', 'hsnet')
  with pytest.raises(UserError, match='chest_xray is a test-only .* --config.data.test_dataset=chest_xray'):
    datasets.resolve(default.get_config('dataset=chest_xray'), training=True)


def test_pfenet_protocol_scores_pascal_at_the_original_resolution(pascal, tfds_dir):
  import jax

  from mmtjax import evaluation, parallel
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
  report = evaluation.evaluate_variables(model, parallel.replicate(parallel.eval_variables(jax.device_get(state))),
                                       config, split, protocol=short)
  result = report['results']['mmnet']
  assert report['protocol'] == 'pfenet' and result['episodes'] == 6
  assert set(result['per_class']) <= {'1', '2', '3', '4', '5'}
  assert 0.0 <= result['fb_iou'] <= 100.0


def test_own_data_trains_two_steps_and_evaluates(tfds_dir, tmp_path):
  """README "Use your own data": train on two class folders, test on a third (split folders)."""
  from mmtjax import sweeps, train_lib
  from tests.conftest import tiny_config
  _folder_tree(tmp_path / 'mine' / 'train', classes=('cat', 'dog'), n=5)
  _folder_tree(tmp_path / 'mine' / 'test', classes=('fox',), n=5)
  config = tiny_config(tfds_dir, 'dataset=folder')
  config.data.update(dict(data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'mine')))
  config.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2))
  config.eval.num_episodes = 4
  workdir = str(tmp_path / 'run')
  report = train_lib.train_and_evaluate(config, workdir)
  assert report['dataset'] == 'folder' and report['split'] == 'test' and report['num_episodes'] == 4
  assert len(report['episodes_sha256']) == 64
  assert os.path.exists(os.path.join(workdir, 'reports', 'latest_step2_folder-test_1shot_custom', 'report.json'))
  report = sweeps.evaluate(config, workdir)
  assert all(np.isfinite(r['miou']) for r in report['results'].values())


def test_a_test_dataset_override_takes_the_targets_own_split():
  from configs import default
  config = default.get_config()
  config.data.test_dataset = 'isic2018'
  config = datasets.resolve(config, training=False)
  assert (config.data.test_split, config.data.train_split, config.data.protocol) == ('test', 'source_train', 'custom')


def test_the_episodes_command_lists_the_evaluations_episodes_without_flags(tmp_path, capsys):
  """Its defaults are the config's (protocol, min_pixels, episode count and seed): same SHA-256."""
  from configs import default
  _folder_tree(tmp_path / 'mine', classes=('ant', 'bee', 'cat'), n=6)
  config = default.get_config('dataset=folder')
  config.data.update(dict(data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'mine')))
  datasets.resolve(config, training=False)
  test = datasets.test_data(config.data)
  split = datasets.load_split(test, config.data.test_split, training=False)
  lines = episodes.episode_lines(episodes.protocol_episodes(
      split, test, datasets.test_protocol(test, config.eval), config.data.shot), split)
  episodes_cmd.main(['--dataset', 'folder', '--manual_dir', str(tmp_path / 'mine'), '--data_dir',
                 str(tmp_path / 'tfds'), '--out', str(tmp_path / 'list.jsonl')])
  assert f'(sha256 {episodes.list_sha256(lines)})' in capsys.readouterr().out
  assert len(lines) == 300 and {ln['class_name'] for ln in lines} == {'ant'}  # fold 0's test class


def test_folder_resizes_an_image_to_its_mask_at_another_scale(tmp_path, capsys):
  """Weizmann horses' layout: the photos are at another scale than their masks (same aspect
  ratio). Such an image is resized to its mask and counted in one line; a mask of another aspect
  ratio is still skipped as 'of another size'."""
  root = tmp_path / 'horses'
  _folder_tree(root, classes=('cat', 'horse'))
  for i in range(2):  # masks at half the image's 20 x 28
    m = np.zeros((10, 14), np.uint8)
    m[2:8, 3:10] = 255
    _mask(str(root / 'horse' / f'img{i}_mask.png'), m)
  _image(str(root / 'horse' / 'odd.png'), 20, 28)
  _mask(str(root / 'horse' / 'odd_mask.png'), np.full((10, 10), 255, np.uint8))  # another aspect ratio
  data = _data('folder', tmp_path, root)
  split = datasets.load_split(data, 'images', training=False)
  records = [split.source[i] for i in range(len(split.source))]
  small = [r for r in records if transforms.decode_image(r['label'], 'x').shape == (10, 14)]
  assert len(small) == 2 and all(transforms.decode_image(r['image'], 'x').shape[:2] == (10, 14) for r in small)
  text = ' '.join(capsys.readouterr().err.splitlines())
  assert '2 masks: at another scale than their image (same aspect ratio): the image was resized' in text
  assert f"skipped 1 masks of another size than their image (first: {root / 'horse' / 'odd.png'})" in text
