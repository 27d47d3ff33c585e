"""train -> checkpoint -> resume -> evaluate on the tiny embedded dataset, and CLI errors."""

import json
import math
import os
import subprocess
import sys

import pytest

from mmtjax import checkpointing, sweeps, train_lib
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['step'] for r in map(json.loads, f) if 'loss' in r]


def test_train_resume_evaluate(tfds_dir, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config = tiny_config(tfds_dir)
  config.train.smoke_episodes = 8  # 4 steps <= smoke_steps: the final test stops at 8 of its 12 episodes
  first = train_lib.train_and_evaluate(config, workdir)
  assert checkpointing.Checkpoints(workdir).latest_step() == 4
  assert first['num_episodes'] == 8 and 'smoke run (train.num_steps=4' in capsys.readouterr().out

  config.train.num_steps = 6
  config.train.smoke_steps = 0  # the full 12 episodes, as evaluate.py runs them
  report = train_lib.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'resuming from step 4' in out and 'smoke run' not in out
  assert report['num_episodes'] == 12
  assert _steps(workdir) == [2, 4, 6]  # the second run started at 4, not 0
  assert checkpointing.Checkpoints(workdir).latest_step() == 6
  assert set(report['results']) == {'memory_on', 'memory_off'}

  report = sweeps.evaluate(config, workdir)
  for r in report['results'].values():
    assert math.isfinite(r['miou']) and math.isfinite(r['fb_iou'])
  # The training run's own report folder is kept; this evaluation has its own beside it.
  name = os.path.join(workdir, 'reports', 'latest_step6_target_test_1shot_custom')
  assert report['step'] == 6 and report['report_path'] == os.path.join(name + '.1', 'report.json')
  assert sorted(os.listdir(os.path.join(workdir, 'reports'))) == [  # the first run's final test, then the second's
      'latest_step4_target_test_1shot_custom', os.path.basename(name), os.path.basename(name) + '.1']
  # train.py's final test wrote the same files as evaluate.py: JSON, Markdown, bars, memory.
  by_train, by_eval = (sorted(os.listdir(folder)) for folder in (name, name + '.1'))
  assert by_train == by_eval == ['classes_mmtjax_shapes_1shot.png', 'memory.png', 'report.json', 'report.md'], by_train

  # A different model config must not touch the existing checkpoints.
  other = tiny_config(tfds_dir)
  other.model.embed_dim = 32
  with pytest.raises(checkpointing.CheckpointError, match='model.embed_dim=16 there, 32 here'):
    train_lib.train_and_evaluate(other, workdir)
  assert checkpointing.Checkpoints(workdir).manager.all_steps() == [4, 6]


def _cli(*args, env_dir=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        env=env, timeout=300)


@pytest.mark.parametrize('args,message', [
    (['--config.train.no_such_field=1'], 'no_such_field'),
    (['--config', 'configs/default.py:shots=5'], "unknown config arg 'shots'"),
])
def test_train_cli_rejects_bad_config_in_one_line(tmp_path, args, message):
  base = ['train.py', '--config', 'configs/default.py', '--workdir', str(tmp_path / 'w')]
  if args[0] == '--config':
    base[2] = args[1]
    args = []
  result = _cli(*base, *args)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error:') and message in last


def test_train_cli_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  result = _cli('train.py', '--config', 'configs/default.py', '--workdir', str(blocker / 'sub'))
  assert result.returncode != 0
  assert 'is not writable' in result.stderr.strip().splitlines()[-1]


def test_evaluate_cli_empty_workdir(tmp_path):
  result = _cli('evaluate.py', '--config', 'configs/default.py', '--workdir', str(tmp_path))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith('error: no checkpoints in')
