"""benchmarks/device_suite.py, the accelerator run (issue 39), in its CPU mode: it cannot rot."""

import importlib.util
import json
import os

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'device_suite.py')


def _suite():
  spec = importlib.util.spec_from_file_location('device_suite', _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_cpu_mode_writes_each_row_and_a_table(tmp_path, capsys):
  """One CPU row in this process (the subprocess path runs the same mmtjax.bench.run)."""
  suite = _suite()
  out = tmp_path / 'suite'
  assert suite.main(['--cpu', '--in_process', '--rows', 'frozen', '--out', str(out)]) == 0
  rows = json.loads((out / 'row00.json').read_text())
  assert rows['model'] == 'mmt' and rows['train']['steps_timed'] == 3 and rows['eval']['episodes_per_s'] > 0
  table = (out / 'table.md').read_text()
  assert capsys.readouterr().out.rstrip().endswith(table.rstrip())
  assert table.startswith('Device: cpu') and '| mmt, dinov2_tiny frozen, 32 px, plain |' in table
  # Never replaces a result.
  assert suite.main(['--cpu', '--out', str(out)]) == 2


def test_every_device_row_is_a_valid_config():
  """The device rows' configs resolve and validate here (a typo would cost a lent GPU)."""
  from mmtjax import config_lib
  from mmtjax.data import datasets
  suite = _suite()
  for name, arg, fields, _ in suite.device_rows():
    config = suite.configured(arg, fields)
    datasets.resolve(config, training=True)
    config_lib.validate(config)
    assert name
