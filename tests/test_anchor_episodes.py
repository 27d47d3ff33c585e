"""Protocol 'hsnet' replays HSNet's and PATNet's test episodes name for name.

Each expected list below is a replay of the anchors' procedure written from
their description (issue 17; HSNet/PATNet data/*.py): numpy's legacy
generator seeded with 0, `choice(list, 1, replace=False)` on the lists of
names themselves, supports redrawn only when equal to the query.
"""

import hashlib
import json
import os
import pickle

import ml_collections
import numpy as np
import pytest

from mmtjax.commands import episodes as episodes_cmd
from mmtjax.data import anchors, datasets, episodes, protocols
from mmtjax.data.builders import fss1000
from mmtjax.errors import UserError
from tests.test_builders import _class_csv, _fss_tree, _image, _isic_tree, _mask, _pascal_tree


def _replay_round_robin(class_lists, n, shot):
  rs = np.random.RandomState(0)
  out = []
  for i in range(n):
    c, names = class_lists[i % len(class_lists)]
    query = rs.choice(names, 1, replace=False)[0]
    sups = []
    while True:
      s = rs.choice(names, 1, replace=False)[0]
      if query != s:
        sups.append(s)
      if len(sups) == shot:
        break
    out.append((c, str(query), [str(s) for s in sups]))
  return out


def _exported(tmp_path, shot, *args):
  out = tmp_path / f'list_{shot}_{len(os.listdir(tmp_path))}.jsonl'
  episodes_cmd.main(['--protocol', 'hsnet', '--shot', str(shot), '--out', str(out), *args])
  with open(out) as f:
    lines = [json.loads(line) for line in f]
  with open(out, 'rb') as f:  # The printed and reported hash is the file's.
    assert hashlib.sha256(f.read()).hexdigest() == episodes.list_sha256(lines)
  return lines


def _as_tuples(lines):
  return [(d['class'], d['query'], d['supports']) for d in lines]


@pytest.mark.parametrize('shot', [1, 5])
def test_isic_episodes_are_patnets(tmp_path, shot):
  root = tmp_path / 'ISIC'
  _isic_tree(root, extra=())
  _class_csv(root / 'class_id.csv', [('ISIC_0000000', 'nevus'), ('ISIC_0000001', 'nevus'), ('ISIC_0000003', 'nevus'),
                                     ('ISIC_0000004', 'melanoma'), ('ISIC_0000013', 'melanoma'),
                                     ('ISIC_0000014', 'seborrheic_keratosis'),
                                     ('ISIC_0000015', 'seborrheic_keratosis')])
  lines = _exported(tmp_path, shot, '--dataset', 'isic2018', '--manual_dir', str(root),
                    '--data_dir', str(tmp_path / 'tfds'))
  lists = [(1, ['ISIC_0000000', 'ISIC_0000001', 'ISIC_0000003']), (2, ['ISIC_0000004', 'ISIC_0000013']),
           (3, ['ISIC_0000014', 'ISIC_0000015'])]
  assert len(lines) == 600 and lines[0]['index'] == 0 and lines[1]['class_name'] == 'melanoma'
  assert _as_tuples(lines) == _replay_round_robin(lists, 600, shot)
  if shot == 5:  # Two candidates per class: supports repeat, as in PATNet.
    assert all(len(set(d['supports'])) == 1 for d in lines if d['class'] == 2)


@pytest.mark.parametrize('shot', [1, 5])
def test_fss_episodes_are_hsnets(tmp_path, shot):
  test_classes = fss1000.published_classes('test')
  picked = [test_classes[3], test_classes[0]]
  _fss_tree(tmp_path / 'fewshot_data', picked, n=10)
  lines = _exported(tmp_path, shot, '--dataset', 'fss1000', '--manual_dir', str(tmp_path / 'fewshot_data'),
                    '--data_dir', str(tmp_path / 'tfds'))
  rs = np.random.RandomState(0)
  expected = []
  for name in sorted(picked):
    folder = f'/data/FSS-1000/{name}'
    for query in sorted(f'{folder}/{n}.jpg' for n in range(1, 11)):  # '10.jpg' sorts before '2.jpg'
      sups = []
      while True:
        s = os.path.join(folder, str(rs.choice(range(1, 11), 1, replace=False)[0])) + '.jpg'
        if query != s:
          sups.append(s)
        if len(sups) == shot:
          break
      stem = lambda p: p.split('/', 3)[3][:-4]  # noqa: E731 - '<class>/<n>'
      expected.append((fss1000.class_ids('test')[name], stem(query), [stem(s) for s in sups]))
  assert [d['query'] for d in lines[:3]] == [f'{sorted(picked)[0]}/{n}' for n in (1, 10, 2)]
  assert _as_tuples(lines) == expected


@pytest.mark.parametrize('shot', [1, 5])
def test_pascal_episodes_follow_hsnets_fold_list(tmp_path, shot):
  ids = _pascal_tree(tmp_path / 'dl', n=80)
  fold0 = [(name, i % 20 + 1) for i, name in enumerate(ids) if i >= 40 and i % 20 + 1 <= 5]
  split_dir = tmp_path / 'hsnet' / 'data' / 'splits' / 'pascal' / 'val'
  os.makedirs(split_dir)
  with open(split_dir / 'fold0.txt', 'w', newline='\r\n') as f:  # HSNet's lists end lines with CRLF
    f.write(''.join(f'{name}__{c:02d}\n' for name, c in fold0))
  lines = _exported(tmp_path, shot, '--dataset', 'pascal5i', '--fold', '0', '--manual_dir', str(tmp_path / 'dl'),
                    '--data_dir', str(tmp_path / 'tfds'), '--fold_list', str(split_dir / 'fold0.txt'))
  classwise = {}
  for name, c in fold0:
    classwise.setdefault(c, []).append(name)
  rs = np.random.RandomState(0)
  expected = []
  for i in range(1000):
    query, c = fold0[i % len(fold0)]
    sups = []
    while True:
      s = rs.choice(classwise[c], 1, replace=False)[0]
      if query != s:
        sups.append(str(s))
      if len(sups) == shot:
        break
    expected.append((c, query, sups))
  assert _as_tuples(lines) == expected


def test_deepglobe_preprocessed_episodes_are_patnets(tmp_path):
  base = tmp_path / 'Deepglobe'
  lists = []
  for c in range(1, 7):
    stems = [f'{2000 + 7 * c + t}_sat_{t}{c % 6}' for t in range(3)]
    lists.append((c, sorted(stems)))
    for stem in stems:
      _image(str(base / str(c) / 'test' / 'origin' / f'{stem}.jpg'), 16, 16, fmt='JPEG')
      m = np.zeros((16, 16), np.uint8)
      m[:6] = 255
      _mask(str(base / str(c) / 'test' / 'groundtruth' / f'{stem}.png'), m)
  for shot in (1, 5):
    lines = _exported(tmp_path, shot, '--dataset', 'deepglobe', '--manual_dir', str(tmp_path),
                      '--data_dir', str(tmp_path / 'tfds'))
    assert _as_tuples(lines) == _replay_round_robin(lists, 600, shot)


def test_list_files_bad_input_and_the_report_hash(tmp_path):
  root = tmp_path / 'ISIC'
  _isic_tree(root, extra=())
  _class_csv(root / 'class_id.csv', [('ISIC_0000000', 'nevus'), ('ISIC_0000001', 'nevus'),
                                     ('ISIC_0000004', 'melanoma'), ('ISIC_0000013', 'melanoma'),
                                     ('ISIC_0000014', 'seborrheic_keratosis')])  # one image of class 3
  data = ml_collections.ConfigDict(dict(dataset='isic2018', data_dir=str(tmp_path / 'tfds'), manual_dir=str(root),
                                        fold=-1, min_pixels=1, protocol='hsnet'))
  split = datasets.load_split(data, 'test', training=False)
  protocol = datasets.test_protocol(data, ml_collections.ConfigDict(dict(num_episodes=1, seed=0)))
  with pytest.raises(UserError, match='class 3: class has no image other than the query ISIC_0000014'):
    episodes.protocol_episodes(split, data, protocol, 1)
  # The hash: identical lists hash alike; one support changed changes it.
  eps = [episodes.Episode(1, 0, (1,)), episodes.Episode(2, 2, (3,))]
  lines = episodes.episode_lines(eps, split)
  assert lines[0]['query'] == split.ids()[0] and episodes.list_sha256(lines) == episodes.list_sha256(
      episodes.episode_lines(list(eps), split))
  other = episodes.episode_lines([eps[0], episodes.Episode(2, 2, (2,))], split)
  assert episodes.list_sha256(other) != episodes.list_sha256(lines)
  # PASCAL without HSNet's fold list; a list naming images that were never downloaded.
  ids = _pascal_tree(tmp_path / 'voc', n=40)
  pascal = ml_collections.ConfigDict(dict(dataset='pascal5i', data_dir=str(tmp_path / 'tfds'), fold=0,
                                          manual_dir=str(tmp_path / 'voc'), min_pixels=1, protocol='hsnet'))
  val = datasets.load_split(pascal, 'val', training=False)
  proto = datasets.test_protocol(pascal, ml_collections.ConfigDict(dict(num_episodes=1, seed=0)))
  with pytest.raises(UserError, match=r"replays HSNet's episode list data/splits/pascal/val/fold0.txt"):
    episodes.protocol_episodes(val, pascal, proto, 1)
  with open(tmp_path / 'fold0.txt', 'w') as f:
    f.write(''.join(f'{name}__01\n' for name in [*ids[20:24], '2011_003271', '2011_003275']))
  pascal.fold_list = str(tmp_path / 'fold0.txt')
  with pytest.raises(UserError, match=r'names 2 images absent from the built data \(first: 2011_00327[15]\)'):
    episodes.protocol_episodes(val, pascal, proto, 1)
  out = tmp_path / 'exists.jsonl'
  out.write_text('keep me')
  with pytest.raises(SystemExit):
    episodes_cmd.main(['--dataset', 'isic2018', '--data_dir', str(tmp_path / 'tfds'), '--out', str(out)])
  assert out.read_text() == 'keep me'


class _Evil:
  def __reduce__(self):
    return (os.system, ('touch /nonexistent-marker',))


def test_coco_fold_lists_are_read_without_globals(tmp_path):
  good = tmp_path / 'fold0.pkl'
  with open(good, 'wb') as f:
    pickle.dump({0: ['val2014/COCO_val2014_000000000139.jpg'], 4: ['val2014/COCO_val2014_000000000285.jpg']}, f)
  assert anchors.read_coco_fold_list(str(good))[4] == ['val2014/COCO_val2014_000000000285.jpg']
  assert anchors.coco_id('val2014/COCO_val2014_000000000285.jpg') == 'COCO_val2014_000000000285'
  for payload in (_Evil(), {0: [_Evil()]}, {0: np.zeros(2)}):
    bad = tmp_path / 'bad.pkl'
    with open(bad, 'wb') as f:
      pickle.dump(payload, f)
    with pytest.raises(UserError, match='refused global'):
      anchors.read_coco_fold_list(str(bad))


def test_coco_episodes_draw_class_then_query():
  classwise = {c: [f'img{c}_{k}' for k in range(3)] for c in range(1, 80, 4)}  # fold 1's classes (0-based)
  got = anchors.coco_episodes(classwise, 1, 50, 2)
  rs = np.random.RandomState(0)
  class_ids = [1 + 4 * v for v in range(20)]
  for c, q, sups in got:
    cls = rs.choice(class_ids, 1, replace=False)[0]
    query = rs.choice(classwise[cls], 1, replace=False)[0]
    expected = []
    while len(expected) < 2:
      s = rs.choice(classwise[cls], 1, replace=False)[0]
      if s != query:
        expected.append(s)
    assert (c, q, list(sups)) == (cls + 1, query, expected)


def test_fss_test_split_is_exactly_the_published_240(tmp_path):
  """Every class folder of FSS-1000 present (one image each): the test split is the published list."""
  root = tmp_path / 'fewshot_data'
  mask = np.zeros((8, 8), np.uint8)
  mask[2:6, 2:6] = 255
  image = np.full((8, 8, 3), 90, np.uint8)
  for split in fss1000.SPLITS:
    for name in fss1000.published_classes(split):
      os.makedirs(root / name)
      _write(root / name / '1.jpg', image)
      _write(root / name / '1.png', mask)
  data = ml_collections.ConfigDict(dict(dataset='fss1000', data_dir=str(tmp_path / 'tfds'), manual_dir=str(root),
                                        fold=-1, min_pixels=1))
  test = datasets.load_split(data, 'test', training=False)
  assert test.classes == tuple(range(761, 1001))
  assert [test.class_name(c) for c in test.classes] == list(fss1000.published_classes('test'))
  assert sorted(test.ids()) == sorted(f'{n}/1' for n in fss1000.published_classes('test'))


def _write(path, array):
  from PIL import Image
  Image.fromarray(array).save(path)


def test_evaluation_scores_the_anchor_list_and_reports_its_hash(tmp_path, tfds_dir):
  import jax

  from mmtjax import evaluation, parallel
  from mmtjax.models import get_model
  from mmtjax.state import create_train_state
  from tests.conftest import tiny_config
  root = tmp_path / 'ISIC'
  _isic_tree(root, extra=())
  _class_csv(root / 'class_id.csv', [(n, c) for n, c in [('ISIC_0000000', 'nevus'), ('ISIC_0000001', 'nevus'),
                                                         ('ISIC_0000004', 'melanoma'), ('ISIC_0000013', 'melanoma'),
                                                         ('ISIC_0000014', 'seborrheic_keratosis'),
                                                         ('ISIC_0000015', 'seborrheic_keratosis')]])
  config = tiny_config(tfds_dir)
  config.data.update(dict(test_dataset='isic2018', test_manual_dir=str(root), test_split=None, protocol='hsnet'))
  datasets.resolve(config, training=False)
  test_data = datasets.test_data(config.data)
  test_data.data_dir = str(tmp_path / 'tfds')
  config.data.data_dir = test_data.data_dir
  split = datasets.load_split(test_data, config.data.test_split, training=False)
  model = get_model(config, axis_name=parallel.AXIS)
  state, _ = create_train_state(model, config)
  short = protocols.Protocol('hsnet', 6, 0, 32, 'square', order='anchors')
  report = evaluation.evaluate_variables(model, parallel.replicate(parallel.eval_variables(jax.device_get(state))),
                                       config, split, protocol=short)
  expected = episodes.episode_lines(episodes.anchor_episodes(split, test_data, 1, 6), split)
  assert report['dataset'] == 'isic2018' and report['num_episodes'] == 6
  assert report['episodes_sha256'] == episodes.list_sha256(expected)
  assert [d['class'] for d in expected] == [1, 2, 3, 1, 2, 3]
