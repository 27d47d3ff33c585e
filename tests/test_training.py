"""Robust training: exact resume, device-count changes, NaN guard, corrupt checkpoints,
the best checkpoint, SIGTERM, bf16 and two-process training."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax import checkpointing, parallel, sweeps, tensorboard_events, train_lib
from mmtjax.errors import DivergedError
from mmtjax.models import get_model
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels
from tests.conftest import state_like, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _final_state(config, workdir):
  ckpts = checkpointing.Checkpoints(workdir, create=False)
  step, state = ckpts.restore_latest(state_like(config), config)
  ckpts.close()
  return step, state


def _assert_states_close(a, b, **tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               err_msg=jax.tree_util.keystr(path), **tol)


def _random_batch(config, devices, per_device):
  """A [devices, per_device, ...] batch of noise images and random masks."""
  s, k = config.data.image_size, config.data.shot
  rng = np.random.default_rng(0)
  lead = (devices, per_device)
  return {'support_images': rng.normal(size=(*lead, k, s, s, 3)).astype(np.float32),
          'support_labels': (rng.random((*lead, k, s, s)) < 0.3).astype(np.uint8),
          'query_images': rng.normal(size=(*lead, s, s, 3)).astype(np.float32),
          'query_labels': (rng.random((*lead, s, s)) < 0.3).astype(np.uint8)}


def _one_step(config, n_devices, per_device):
  """One pmap'd train step from a fresh state: (model, state, host batch, new state, metrics)."""
  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  devices = jax.local_devices()[:n_devices]
  step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                  trainable_labels(state.params, config), devices)
  batch = _random_batch(config, devices=n_devices, per_device=per_device)
  new, stats = step(parallel.replicate(jax.device_get(state), devices), parallel.shard(batch, devices))
  return model, state, batch, new, stats


@pytest.fixture(scope='module')
def straight_run(tfds_dir, tmp_path_factory):
  """4 steps in one run on 4 devices: the reference for the resume tests."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  config = tiny_config(tfds_dir)
  train_lib.train(config, workdir)
  return _final_state(config, workdir)


def test_interrupted_run_equals_uninterrupted(tfds_dir, tmp_path, straight_run):
  config = tiny_config(tfds_dir)
  workdir = str(tmp_path)
  assert train_lib.train_and_evaluate(config, workdir, stop_after_steps=1) is None
  assert train_lib.train_and_evaluate(config, workdir, stop_after_steps=2) is None
  assert checkpointing.Checkpoints(workdir).all_steps() == [2, 3]  # max_to_keep=2
  train_lib.train(config, workdir)
  step, state = _final_state(config, workdir)
  assert step == straight_run[0] == 4
  # Same devices, same episodes, same rng: bit-identical.
  _assert_states_close(state, straight_run[1], rtol=0, atol=0)


def test_the_loop_does_not_wait_for_the_device_between_logging_steps(trained_run):
  # Step 1 of trained_run is neither a logging nor a checkpoint step: its metrics stay on the device
  # until step 2 is dispatched (see trained_run). [False] means the loop waited for them.
  _, record = trained_run
  assert record and all(record)  # One entry per device


def test_resume_on_a_different_device_count(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  # Dropout masks are drawn per device, so they depend on the layout; without
  # dropout the run must not depend on how the global batch is split.
  config.model.dropout = 0.0
  train_lib.train(config, str(tmp_path / 'straight'))  # 4 devices x 1 episode
  workdir = str(tmp_path / 'resumed')
  train_lib.train(config, workdir, stop_after_steps=2)  # 4 x 1, then 2 devices x 2 episodes
  train_lib.train(config, workdir, devices=jax.local_devices()[:2])
  step, state = _final_state(config, workdir)
  ref_step, ref = _final_state(config, str(tmp_path / 'straight'))
  assert step == ref_step == 4
  # Only the order of the cross-device reductions differs.
  _assert_states_close(state.params, ref.params, rtol=1e-4, atol=1e-6)
  _assert_states_close(state.model_state, ref.model_state, rtol=1e-4, atol=1e-6)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_checkpoints(tfds_dir, tmp_path, monkeypatch):
  config = tiny_config(tfds_dir)
  workdir = str(tmp_path)
  train_lib.train_and_evaluate(config, workdir, stop_after_steps=2)
  # Poisons the total loss from step 3 on (past the config check, which refuses a NaN weight).
  monkeypatch.setattr(train_lib.config_lib, 'validate', lambda config: None)
  config.loss.orth = float('nan')
  with pytest.raises(DivergedError, match=r'loss is nan at step 3; stopping without saving'):
    train_lib.train_and_evaluate(config, workdir)
  assert checkpointing.Checkpoints(workdir).all_steps() == [2]
  assert _final_state(tiny_config(tfds_dir), workdir)[0] == 2


def test_guarded_step_leaves_state_unchanged(tfds_dir):
  config = tiny_config(tfds_dir)
  config.loss.orth = float('nan')
  _, state, _, new, stats = _one_step(config, n_devices=1, per_device=2)
  assert parallel.host_scalars(stats)['finite'] == 0
  _assert_states_close(parallel.unreplicate(new), jax.device_get(state), rtol=0, atol=0)


def test_corrupt_latest_checkpoint_falls_back_to_previous(tfds_dir, tmp_path, capsys):
  config = tiny_config(tfds_dir)
  workdir = str(tmp_path)
  train_lib.train(config, workdir)  # checkpoints 2, 4 (the fallback is training's: no test evaluation)
  state_dir = os.path.join(workdir, 'checkpoints', '4', 'state')
  for root, _, files in os.walk(state_dir):  # A half-written copy: every file cut short.
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)
  config.train.num_steps = 6
  capsys.readouterr()
  train_lib.train(config, workdir)
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if 'unreadable' in line]
  assert len(warnings) == 1 and warnings[0].startswith('warning: ')  # One line, no traceback.
  assert 'checkpoints/4 is unreadable' in warnings[0] and 'trying the previous' in warnings[0]
  assert os.path.isdir(os.path.join(workdir, 'corrupt_checkpoints', '4'))  # Kept, not deleted.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    steps = [r['step'] for r in map(json.loads, f) if 'loss' in r]
  assert steps == [2, 4, 6]  # Restarted from step 2: the first run's step 4 record was dropped.
  assert checkpointing.Checkpoints(workdir).all_steps() == [4, 6]


def test_best_checkpoint_keeps_the_highest_validation_miou(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir)
  config.train.eval_every = 1
  config.train.log_panels = 1
  workdir = str(tmp_path)
  train_lib.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    val = {r['step']: r['val']['miou'] for r in map(json.loads, f) if 'val' in r}
  assert sorted(val) == [1, 2, 3, 4]
  # The same numbers, and a prediction panel per eval mode at each validation and the test, in TensorBoard.
  events = os.path.join(workdir, tensorboard_events.SUBDIR)
  assert tensorboard_events.read_scalars(events)['val/miou'] == [(s, pytest.approx(v)) for s, v in sorted(val.items())]
  assert sorted(tensorboard_events.read_image_tags(events)) == ['test/episode000', 'val/episode000']
  best = checkpointing.Checkpoints(workdir, subdir=checkpointing.BEST_SUBDIR, best_metric='miou')
  best_step = max(val, key=lambda s: (val[s], -s))
  assert best.all_steps() == [best_step]
  report = sweeps.evaluate(config, workdir, best=True)
  assert report['step'] == best_step and report['checkpoint'] == checkpointing.BEST_SUBDIR
  assert report['report_path'] == os.path.join(
      workdir, 'reports', f'best_step{best_step}_target_test_1shot_custom', 'report.json')
  assert os.path.exists(report['report_path'])


def _tiny_flags(tfds_dir):
  return [f'--config.data.data_dir={tfds_dir}', '--config.data.builder_config=tiny',
          '--config.data.image_size=32', '--config.data.min_pixels=4', '--config.data.num_workers=2',
          '--config.model.embed_dim=16', '--config.memory.num_items=4', '--config.train.batch_size=4',
          '--config.train.warmup_steps=1', '--config.train.eval_every=0', '--config.train.log_panels=0',
          '--config.eval.num_episodes=8']


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tfds_dir, tmp_path):
  workdir = str(tmp_path / 'run')
  cmd = [sys.executable, 'train.py', '--config', 'configs/default.py', '--workdir', workdir,
         *_tiny_flags(tfds_dir), '--config.train.num_steps=100000', '--config.train.log_every=1',
         '--config.train.checkpoint_every=100000']
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  lines = []
  deadline = time.time() + 240
  for line in proc.stdout:
    lines.append(line)
    if 'step 3/100000' in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  text = ''.join(lines) + out
  assert proc.returncode == 0, text[-2000:]
  assert 'received SIGTERM: saved step' in text
  config = tiny_config(tfds_dir)
  step, state = _final_state(config, workdir)
  assert step >= 3 and int(state.step) == step


def test_bfloat16_compute_keeps_float32_params_memory_and_loss(tfds_dir):
  config = tiny_config(tfds_dir)
  config.compute_dtype = 'bfloat16'
  model, state, batch, new, stats = _one_step(config, n_devices=2, per_device=1)
  host = parallel.host_scalars(stats)
  assert host['finite'] == 1 and np.isfinite(host['loss'])
  assert stats['loss'].dtype == jnp.float32
  new = parallel.unreplicate(new)
  for tree in (new.params, new.model_state):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {np.dtype('float32')}
  memory_before = jax.tree.leaves(state.model_state['memory'])
  memory_after = jax.tree.leaves(new.model_state['memory'])
  assert len(memory_after) == 6  # means, stds, centres, usage, initialized
  assert not all(np.allclose(a, b) for a, b in zip(memory_after, memory_before))
  # The forward pass really runs in bfloat16 (logits are cast back to float32).
  inputs = (batch['support_images'][0], batch['support_labels'][0], batch['query_images'][0])
  variables = {'params': state.params, **state.model_state}
  low = model.apply(variables, *inputs, train=False)['logits']
  config.compute_dtype = 'float32'
  high = get_model(config).apply(variables, *inputs, train=False)['logits']
  assert low.dtype == jnp.float32
  assert 0 < np.abs(low - high).max() < 0.05 * np.abs(high).max()


_WORKER = textwrap.dedent('''
    import json
    import sys
    import jax
    import numpy as np
    from mmtjax import distributed, parallel, train_lib
    from tests.conftest import tiny_config
    assert distributed.maybe_initialize()
    config = tiny_config(sys.argv[1])
    config.train.num_steps = 2
    config.train.batch_size = 8  # 2 processes x 4 devices (conftest's XLA_FLAGS)
    config.eval.num_episodes = 12  # 2 global eval batches of 8; process 1's second is padding
    result = train_lib.train(config, sys.argv[2])
    flat = jax.tree_util.tree_leaves_with_path(parallel.unreplicate(result.state))
    np.savez(sys.argv[3], **{jax.tree_util.keystr(k): v for k, v in flat})
    report = train_lib.evaluation.evaluate_variables(
        result.model, parallel.eval_variables(result.state), config,
        train_lib.datasets.load_split(config.data, config.data.test_split, training=False))
    print('report', json.dumps(report['results'], sort_keys=True), flush=True)
    ckpts = train_lib.checkpointing.Checkpoints(sys.argv[2], create=False)
    print('steps', ckpts.all_steps(), 'process', jax.process_index(), 'of', jax.process_count(),
          'devices', jax.device_count(), flush=True)
''')


@pytest.mark.slow
def test_two_processes_train_identical_parameters(tmp_path):
  workdir = str(tmp_path / 'run')
  tfds_dir = str(tmp_path / 'tfds')  # Empty: process 0 builds the dataset, process 1 waits.
  port = 20000 + os.getpid() % 20000
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_PLATFORMS='cpu',
               JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES='2',
               JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen([sys.executable, '-c', _WORKER, tfds_dir, workdir,
                                   str(tmp_path / f'state{pid}.npz')], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert 'steps [2] process 0 of 2 devices 8' in outs[0]
  assert 'steps [2] process 1 of 2 devices 8' in outs[1]
  p0, p1 = (np.load(tmp_path / f'state{i}.npz') for i in range(2))
  assert sorted(p0) == sorted(p1) and len(p0) > 0
  for key in p0:
    np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
  # Each process scored half of the episodes; the merged report is the whole list's,
  # the same on both processes and equal to a single-process evaluation.
  reports = [json.loads(out.split('report ', 1)[1].splitlines()[0]) for out in outs]
  assert reports[0] == reports[1]
  config = tiny_config(tfds_dir)
  config.eval.num_episodes = 12
  single = sweeps.evaluate(config, workdir)['results']
  for mode, r in single.items():
    assert reports[0][mode]['episodes'] == r['episodes'] == 12
    assert reports[0][mode]['miou'] == pytest.approx(r['miou'], abs=1e-9)
    assert reports[0][mode]['fb_iou'] == pytest.approx(r['fb_iou'], abs=1e-9)


def test_a_run_not_longer_than_the_warm_up_clips_it():
  from configs import default
  from mmtjax.state import learning_rate_schedule
  config = default.get_config()
  t = config.train
  assert (t.num_steps, t.warmup_steps) == (2000, 50)
  full = learning_rate_schedule(config)
  assert float(full(0)) == 0.0 and float(full(50)) == pytest.approx(t.lr)  # an ordinary run: unchanged
  t.num_steps = 1  # a smoke test: one step at the full learning rate, not at 0
  assert float(learning_rate_schedule(config)(0)) == pytest.approx(t.lr)
  t.num_steps = 30  # warm-up of 3 steps, then the poly decay over the other 27
  s = learning_rate_schedule(config)
  assert float(s(0)) == 0.0 and float(s(3)) == pytest.approx(t.lr) and float(s(30)) == pytest.approx(0.0)


def test_a_smoke_run_caps_validation_episodes_and_a_real_run_does_not():
  config = tiny_config('unused')
  config.train.smoke_episodes = 3
  assert train_lib.smoke_episodes(config) == 3 and train_lib._val_protocol(config).num_episodes == 3
  config.train.num_steps = config.train.smoke_steps + 1
  assert train_lib.smoke_episodes(config) is None and train_lib._val_protocol(config).num_episodes == 8
  config.train.num_steps, config.train.smoke_steps = 1, 0
  assert train_lib.smoke_episodes(config) is None
