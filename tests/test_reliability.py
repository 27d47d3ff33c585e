"""Bad input and faults: one line per error, nothing overwritten, one trainer per workdir."""

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmtjax import checkpointing, cli, config_lib, parallel, report_files, sweeps, train_lib, training_log
from mmtjax.errors import Terminated, UserError
from mmtjax.models import get_model
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels
from tests.conftest import state_like, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('MMTJAX_TRACEBACK', None)
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=timeout)


def _one_error_line(result):
  lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
  assert len(lines) == 1, result.stdout + result.stderr
  assert lines[0].startswith('error: ')
  return lines[0]


# --- 3. one line per error --------------------------------------------------------------------

@pytest.mark.parametrize('args,message', [
    (['--config', 'configs/nope.py'], 'no such config file'),
    (['--config', 'configs'], 'is a directory'),
    (['--config', 'configs/default.py', '--config.train.no_such_field=1'],
     "unknown config field 'train.no_such_field'"),
    # One value check per config section through the command line (each run is a Python start);
    # the other fields' checks: test_config_validation_names_the_field, in-process.
    (['--config', 'configs/default.py', '--config.train.lr=-1'], 'train.lr must be a finite number > 0'),
    (['--config', 'configs/default.py', '--config.memory.momentum=1.0'], 'memory.momentum must be in [0, 1)'),
    (['--config', 'configs/default.py', '--config.model.memory_stage=layer9'], 'model.memory_stage'),
    (['--config', 'configs/default.py', '--stop_after_steps=-5'], '--stop_after_steps must be >= 1'),
])
def test_train_cli_bad_input_is_one_line(tmp_path, args, message):
  result = _cli('train.py', '--workdir', str(tmp_path / 'w'), *args)
  assert result.returncode == 2
  line = _one_error_line(result)
  assert message in line and "\\'" not in line and '\\n' not in line


def test_data_dir_that_is_a_file_and_output_that_is_a_directory(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  result = _cli('train.py', '--config', 'configs/default.py', '--workdir', str(tmp_path / 'w'),
                f'--config.data.data_dir={blocker}')
  assert 'is a file, not a directory' in _one_error_line(result)
  with pytest.raises(UserError, match='is a directory'):
    report_files.write_report({}, str(tmp_path))
  assert os.listdir(tmp_path) == ['file']  # No stray <output>.tmp.


def test_a_bug_is_reported_as_a_bug_with_its_traceback_file(tmp_path, monkeypatch):
  def broken():
    np.zeros(3) + np.zeros(4)  # A programming error deep in numpy: a ValueError.

  with pytest.raises(SystemExit) as done:
    cli.run(broken, str(tmp_path))
  assert done.value.code == 1
  files = [f for f in os.listdir(tmp_path) if f.startswith('mmtjax_error_')]
  assert len(files) == 1
  with open(tmp_path / files[0]) as f:
    assert 'Traceback' in f.read()


def test_user_errors_and_os_errors_are_one_line(capsys):
  def disk_full():
    raise OSError(errno.ENOSPC, 'No space left on device', '/data/x')

  for fn, text in ((disk_full, 'no space left on the device (/data/x)'),
                   (lambda: (_ for _ in ()).throw(UserError('bad\nfield')), 'error: bad field')):
    with pytest.raises(SystemExit) as done:
      cli.run(fn)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert '\n' not in err and text in err


# --- 5. validation before work ----------------------------------------------------------------

@pytest.mark.parametrize('field,value', [
    ('train.lr', float('nan')), ('train.lr', 0.0), ('train.checkpoint_every', 0), ('train.log_every', -1),
    ('train.eval_every', -1), ('train.max_to_keep', 0), ('eval.batch_size', 0), ('train.warmup_steps', -1),
    ('memory.alpha', 1.5), ('memory.momentum', -0.1), ('memory.tau', 0.0), ('memory.num_items', 0),
    ('memory.similarity', 'dot'), ('memory.assignment', 'all'), ('memory.reseed_threshold', 1.0),
    ('loss.orth', -1.0), ('data.num_workers', 0), ('train.log_every', 0), ('eval.num_episodes', 0),
    ('memory.momentum', 1.0),
])
def test_config_validation_names_the_field(field, value):
  from configs import default
  config = default.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(UserError, match=field.replace('.', r'\.')):
    config_lib.validate(config)


# --- 2. reports never overwrite each other ----------------------------------------------------

def test_report_names_hold_what_distinguishes_them(tmp_path):
  report = {'step': 7, 'split': 'target_test', 'shot': 5, 'protocol': 'hsnet'}
  assert report_files.report_name(report, 'best') == 'eval_best_step7_target_test_5shot_hsnet.json'
  path = str(tmp_path / 'r.json')
  first = report_files.write_report({'a': 1}, path)
  second = report_files.write_report({'a': 2}, path)
  assert (first, second) == (path, str(tmp_path / 'r.1.json'))
  with open(path) as f:
    assert json.load(f) == {'a': 1}


# --- 4. disk full during a save -----------------------------------------------------------------

def test_disk_full_stops_at_that_step_and_keeps_the_previous_checkpoint(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir)
  config.train.num_steps = 8
  workdir = str(tmp_path)
  real_save = checkpointing.ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step == 4:  # As orbax fails when the disk fills: a temporary directory is left behind.
      os.makedirs(os.path.join(self.directory, '4.orbax-checkpoint-tmp-123'), exist_ok=True)
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, 'save', save)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'could not write checkpoint 4 .*no space left .*step 2 is still the latest'):
    train_lib.train(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2']
  monkeypatch.undo()
  result = train_lib.train(config, workdir)  # The next run resumes from 2 and finishes.
  assert result.step == 8


# --- 6. never save a diverged state --------------------------------------------------------------

def test_a_step_that_makes_the_weights_non_finite_is_a_no_op(tfds_dir):
  config = tiny_config(tfds_dir)
  config.train.optimizer, config.train.lr, config.train.warmup_steps = 'sgd', 1e38, 0
  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  devs = jax.local_devices()[:1]
  step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                  trainable_labels(state.params, config), devs)
  rng = np.random.default_rng(0)
  labels = np.zeros((1, 2, 1, 32, 32), np.uint8)
  labels[..., 8:24, 8:24] = 1
  batch = {'support_images': rng.normal(size=(1, 2, 1, 32, 32, 3)).astype(np.float32) * 1e3,
           'support_labels': labels, 'query_images': rng.normal(size=(1, 2, 32, 32, 3)).astype(np.float32),
           'query_labels': labels[:, :, 0]}
  new, stats = step(parallel.replicate(state, devs), parallel.shard(batch, devs))
  host = parallel.host_scalars(stats)
  assert np.isfinite(host['loss']) and host['finite'] == 0  # The loss was fine; the weights were not.
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(parallel.unreplicate(new.params))):
    np.testing.assert_array_equal(a, b)


# --- 7. one trainer per workdir; consistent evaluation; metrics once per step --------------------

def test_a_second_trainer_is_refused_naming_the_first(tmp_path):
  with checkpointing.WorkdirLock(str(tmp_path)):
    with pytest.raises(UserError, match=rf'in use by another trainer \(pid {os.getpid()} on host'):
      checkpointing.WorkdirLock(str(tmp_path)).__enter__()
  with checkpointing.WorkdirLock(str(tmp_path)):  # Released: free again.
    pass


def test_a_crashed_trainer_leaves_no_stale_lock(tmp_path):
  code = ('import sys, time; from mmtjax import checkpointing; '
          'checkpointing.WorkdirLock(sys.argv[1]).__enter__(); print("locked", flush=True); time.sleep(60)')
  proc = subprocess.Popen([sys.executable, '-c', code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.stdout.readline().strip() == 'locked'
  with pytest.raises(UserError, match=f'pid {proc.pid}'):
    checkpointing.WorkdirLock(str(tmp_path)).__enter__()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with checkpointing.WorkdirLock(str(tmp_path)):
    pass


def test_evaluation_follows_a_checkpoint_rotated_away_while_reading(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir)
  workdir = str(tmp_path)
  train_lib.train(config, workdir)  # checkpoints 2, 4
  real_restore = checkpointing.Checkpoints.restore
  calls = []

  def restore(self, step, template):
    calls.append(step)
    if len(calls) == 1:  # A trainer rotates step 4 away and writes 6 in between.
      os.rename(os.path.join(self.directory, '4'), os.path.join(self.directory, '6'))
      raise checkpointing.CheckpointError(f'checkpoint {self.directory}/4 is unreadable: gone')
    return real_restore(self, step, template)

  monkeypatch.setattr(checkpointing.Checkpoints, 'restore', restore)
  template = state_like(config)
  step, _ = sweeps._restore_for_eval(workdir, checkpointing.SUBDIR, None, config, template)
  assert calls == [4, 6] and step == 6


def test_metrics_hold_each_step_once_after_a_resume(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(json.dumps({'step': s}) + '\n' for s in (2, 4, 6, 8)) + '{"step": 1')
  train_lib._truncate_metrics(str(tmp_path), 4)
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [2, 4]


# --- 8. SIGTERM at any point -----------------------------------------------------------------

def _tiny_flags(tfds_dir):
  return [f'--config.data.data_dir={tfds_dir}', '--config.data.builder_config=tiny',
          '--config.data.image_size=32', '--config.data.min_pixels=4', '--config.data.num_workers=2',
          '--config.model.embed_dim=16', '--config.memory.num_items=4', '--config.train.batch_size=4',
          '--config.train.warmup_steps=1', '--config.train.eval_every=0', '--config.train.log_panels=0']


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_exits_0_in_one_line(tfds_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, 'train.py', '--config', 'configs/default.py', '--workdir', workdir,
         *_tiny_flags(tfds_dir), '--config.train.num_steps=2', '--config.eval.num_episodes=100000',
         '--config.train.smoke_steps=0']  # A smoke run would cap the test at 16 episodes: done in 3 s.
  proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.time() + 240
  for line in proc.stdout:
    lines.append(line)
    if line.startswith('testing on') or time.time() > deadline:
      break
  time.sleep(3)  # Inside the evaluation loop.
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, ''.join(lines) + out
  assert out.strip().splitlines() == [out.strip().splitlines()[-1]]
  assert 'received SIGTERM during the final evaluation' in out and 'Traceback' not in out
  assert checkpointing.Checkpoints(workdir, create=False).latest_step() == 2


def test_sigterm_inside_a_gc_callback_is_raised_at_the_next_check(monkeypatch):
  # What CI once hit: the handler ran inside JAX's gc callback, which printed and dropped its
  # exception, and the final evaluation went on for minutes.
  dropped = []
  monkeypatch.setattr(sys, 'unraisablehook', dropped.append)
  monkeypatch.setattr(training_log, '_sigterm_received', False)
  previous = signal.getsignal(signal.SIGTERM)
  armed = [True]

  def callback(phase, info):
    if phase == 'start' and armed:
      armed.pop()
      os.kill(os.getpid(), signal.SIGTERM)
      for _ in range(1000):  # the handler runs between two of these bytecodes
        pass

  try:
    training_log.raise_on_sigterm()
    gc.callbacks.append(callback)
    gc.collect()
  finally:
    gc.callbacks.remove(callback)
    signal.signal(signal.SIGTERM, previous)
  assert not armed and not dropped
  with pytest.raises(Terminated, match='received SIGTERM'):
    training_log.raise_if_sigterm()
  with training_log.StopSignal() as stop:
    assert stop.should_stop(0)


# --- start-up: the command lines answer --help without JAX, and keep a compile cache ----------

_NO_JAX = '''
import runpy, sys
sys.argv = [sys.argv[1], '--help']
try:
  runpy.run_path(sys.argv[0], run_name='__main__') if sys.argv[0].endswith('.py') else \\
      runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
except SystemExit:
  pass
print('jax loaded' if 'jax' in sys.modules else 'no jax')
'''


@pytest.mark.parametrize('command', ['train.py', 'evaluate.py', 'mmtjax.commands.predict',
                                     'mmtjax.commands.episodes'])
def test_help_answers_without_importing_jax(command):
  out = _cli('-c', _NO_JAX, command, timeout=120)
  assert out.returncode == 0, out.stderr
  assert 'usage' in out.stdout.lower() or 'flags' in out.stdout.lower(), out.stdout
  assert out.stdout.strip().splitlines()[-1] == 'no jax', out.stdout[-500:]


def test_compile_cache_folder_is_private_and_can_be_turned_off(tmp_path, monkeypatch):
  monkeypatch.delenv(cli.COMPILE_CACHE_ENV)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  before = jax.config.jax_compilation_cache_dir
  try:
    where = cli.compile_cache()
    assert where == str(tmp_path / 'xdg' / 'mmtjax' / 'jax')
    assert os.stat(where).st_mode & 0o777 == 0o700
    assert jax.config.jax_compilation_cache_dir == where
    monkeypatch.setenv(cli.COMPILE_CACHE_ENV, str(tmp_path / 'mine'))
    assert cli.compile_cache() == str(tmp_path / 'mine')
    monkeypatch.setenv(cli.COMPILE_CACHE_ENV, 'off')
    assert cli.compile_cache() is None
  finally:
    jax.config.update('jax_compilation_cache_dir', before)


def test_progress_meter_rate_leaves_out_the_first_unit():
  from mmtjax import progress
  said, now = [], [0.0]
  meter = progress.Meter('eval x', 100, 'episodes', every_s=20.0, clock=lambda: now[0], say=said.append)
  for t, done in ((30.0, 10), (35.0, 20), (41.0, 30), (52.0, 40), (62.0, 100)):
    now[0] = t
    meter.update(done)
  # The first unit (30 s: compiling) is left out of the rate: 10 episodes in the 5 s after it; then
  # nothing for 20 s, and nothing once all is done.
  assert said == ['eval x: 20/100 episodes, 2.0 episodes/s, ETA 0m40s']
  assert progress.duration(3725) == '1h02m' and progress.duration(61) == '1m01s'


@pytest.mark.parametrize('command,extra', [('train.py', ['stray']), ('evaluate.py', ['--shots', '1,', '5'])])
def test_a_stray_word_on_the_command_line_is_one_line(tmp_path, command, extra):
  workdir = tmp_path / 'w'
  out = _cli(command, '--config', 'configs/default.py', f'--workdir={workdir}', *extra, timeout=120)
  lines = [x for x in out.stderr.splitlines() if x.strip()]
  assert out.returncode == 2 and len(lines) == 1, out.stderr
  assert lines[0].startswith(f"error: unexpected argument '{extra[-1]}'"), lines
  assert not workdir.exists()


def test_ask_what_there_is_and_the_config_a_command_would_run(tmp_path, capsys):
  """Issue 40: the list command names every method, backbone (with its weight files), dataset
  and config variant; --print_config prints the resolved config and runs nothing."""
  from mmtjax import methods
  from mmtjax.commands import list as list_cmd
  from mmtjax.data import datasets
  from mmtjax.models import backbones
  assert list_cmd.main([]) == 0
  out = capsys.readouterr().out
  for section in list_cmd.SECTIONS:
    assert f'{section}:\n' in out
  assert all(f'  {m} ' in out for m in methods.names())
  assert all(f'  {b} ' in out for b in backbones.NAMES) and 'dinov2_vits14_pretrain.pth' in out
  assert all(f'  {d} ' in out for d in datasets.names()) and 'configs/patnet.py:target=' in out
  workdir = tmp_path / 'never'
  proc = _cli('train.py', '--config', 'configs/default.py:model=baseline', '--config.data.shot=2',
              '--workdir', str(workdir), '--print_config')
  assert proc.returncode == 0, proc.stderr
  assert 'name: baseline' in proc.stdout and 'shot: 2' in proc.stdout and 'train_split: source' in proc.stdout
  assert not workdir.exists()
