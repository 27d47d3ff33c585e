"""A dataset is one object: a builder defined here, registered, trains, is evaluated with the
protocol it declares, has its episodes exported by the episodes command and is named in the
report, with no library change (as tests/test_methods.py adds a method)."""

import functools
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmtjax import sweeps, train_lib
from mmtjax.commands import episodes as episodes_cmd
from mmtjax.commands import list as list_cmd
from mmtjax.data import datasets, episodes, protocols
from mmtjax.data.builders import raw
from tests.conftest import tiny_config

# --- a dataset of the test's own: cell images, 8-bit class maps, two folds of two classes -------

_CLASSES = ('nucleus', 'membrane', 'vesicle', 'fibre')


class TinyCells(raw.RawBuilder):
  """<root>/{train,test}/<name>.png images with <name>_label.png class maps (ids 1-4, 0 background)."""

  DOWNLOAD_PAGE = 'written by tests/test_datasets.py'
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  LAYOUTS = (('train', 'test'),)
  CLASS_NAMES = _CLASSES
  SPLITS = ('train', 'test')
  DEFAULTS = dict(train_split='train', val_split='train', test_split='test', protocol='cells')
  DISPLAY_NAME = 'Tiny Cells'
  # Its own protocol: 5 episodes, seed 3, 32 px, the class cycling over the test classes.
  PROTOCOLS = {'cells': protocols.Protocol('cells', 5, 3, 32, 'square', order='round_robin')}
  SUITES = ('cells_suite',)

  def items(self, root, split):
    folder = os.path.join(root, split)
    for name in sorted(f for f in os.listdir(folder) if not f.endswith('_label.png')):
      stem = name[:-len('.png')]
      image, label = os.path.join(folder, name), os.path.join(folder, f'{stem}_label.png')
      yield raw.file_item(stem, image, functools.partial(raw.class_map, label, len(_CLASSES)),
                          required=(image, label), builder=self.name, page=self.DOWNLOAD_PAGE)

  def split_classes(self, split, fold, training, indexed):
    del split, indexed  # fold f tests classes 2f+1 and 2f+2 and trains on the other two
    return raw.fold_split(len(_CLASSES), (2 * fold + 1, 2 * fold + 2) if fold >= 0 else (), fold, training)


def _cells(root, n=12, size=32, seed=0):
  """Image i holds classes i % 4 + 1 and (i + 1) % 4 + 1, each a block of 12 x 12 pixels."""
  rng = np.random.default_rng(seed)
  for split, count in (('train', n), ('test', n)):
    os.makedirs(root / split)
    for i in range(count):
      Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(root / split / f'cell_{i:03d}.png')
      label = np.zeros((size, size), np.uint8)
      label[2:14, 2:14] = i % 4 + 1
      label[18:30, 16:28] = (i + 1) % 4 + 1
      Image.fromarray(label).save(root / split / f'cell_{i:03d}_label.png')


@pytest.fixture
def cells():
  datasets.register(TinyCells)
  yield TinyCells
  datasets.unregister(TinyCells.name)


def test_a_new_dataset_trains_evaluates_exports_and_is_named_without_library_changes(cells, tfds_dir, tmp_path):
  _cells(tmp_path / 'download')
  config = tiny_config(tfds_dir, 'dataset=tiny_cells,fold=0')
  config.data.update(dict(data_dir=str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'download')))
  config.train.update(dict(num_steps=2, log_every=1, checkpoint_every=2))
  workdir = str(tmp_path / 'run')
  report = train_lib.train_and_evaluate(config, workdir)
  # Its own splits, folds and protocol: the declared count and seed, the classes 1 and 2 of fold 0.
  assert (report['dataset'], report['split'], report['protocol']) == ('tiny_cells', 'test', 'cells')
  assert report['num_episodes'] == 5 and report['seed'] == 3
  assert set(report['class_names'].values()) == {'nucleus', 'membrane'}
  assert os.path.exists(os.path.join(workdir, 'reports', 'latest_step2_tiny_cells-test_1shot_cells', 'report.json'))

  # The episodes command lists the evaluation's episodes (the same hash) with no flag but the data.
  out = tmp_path / 'cells.jsonl'
  episodes_cmd.main(['--dataset', 'tiny_cells', '--fold', '0', '--manual_dir', str(tmp_path / 'download'),
                     '--data_dir', str(tmp_path / 'tfds'), '--min_pixels', '4', '--image_size', '32',
                     '--out', str(out)])
  with open(out) as f:
    lines = [json.loads(line) for line in f]
  assert episodes.list_sha256(lines) == report['episodes_sha256']
  assert [d['class_name'] for d in lines] == ['nucleus', 'membrane'] * 2 + ['nucleus']  # its round robin
  assert all(d['query'].startswith('cell_') for d in lines)  # record ids: its file names

  # Named in the report by its display name; its suite and its line in the list command.
  summary = sweeps.sweep(config, workdir, seeds=[0, 1])
  with open(summary['markdown_path']) as f:
    assert 'Tiny Cells 1-shot' in f.read()
  assert datasets.suites()['cells_suite'] == ('tiny_cells',)
  assert any(line.split()[0] == 'tiny_cells' and 'test_datasets.py' in line for line in list_cmd.lines('datasets'))


def test_a_dataset_declares_what_the_library_asks(cells):
  """The registry and the declarations: protocols by name, defaults, display names."""
  assert 'tiny_cells' in datasets.names() and datasets.get('tiny_cells') is TinyCells
  assert datasets.defaults('tiny_cells') == TinyCells.DEFAULTS and datasets.display_name('tiny_cells') == 'Tiny Cells'
  data = tiny_config('', 'dataset=tiny_cells').data
  data.protocol = 'cells'
  assert datasets.test_protocol(data, None).num_episodes == 5 and 'cells' in datasets.known_protocols(data)
  data.protocol = 'pfenet'
  with pytest.raises(Exception, match=r"protocol 'pfenet' is defined for \['coco20i', 'pascal5i'\], not 'tiny_cells'"):
    datasets.test_protocol(data, None)
  assert datasets.display_name('pascal5i') == 'PASCAL-5i' and datasets.display_name('my_label') == 'my_label'
