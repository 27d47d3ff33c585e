"""Episodic training: data, state, the pmap'd step, logging, checkpoints, final eval."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time

import jax
import ml_collections

from mmtjax import checkpointing, config_lib, eval_lib, parallel
from mmtjax.data import datasets, pipeline
from mmtjax.data.episodes import EpisodeSampler
from mmtjax.models import get_model
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels


def prepare_workdir(workdir: str) -> None:
  """Creates workdir; a clear error if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise PermissionError(f'workdir {workdir} is not writable: {e.strerror}') from None


def _format_duration(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


class _Log:
  """Progress lines with ETA on the console and one JSON object per line in metrics.jsonl."""

  def __init__(self, workdir: str, total: int, start: int):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.total, self.start = total, start
    self.t0 = self.t_last = time.time()
    self.last_step = start

  def write(self, record: dict) -> None:
    if jax.process_index() == 0:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')

  def train(self, step: int, stats: dict, episodes_per_step: int) -> None:
    now = time.time()
    rate = (step - self.last_step) * episodes_per_step / max(now - self.t_last, 1e-9)
    done = step - self.start
    eta = (now - self.t0) / max(done, 1) * (self.total - step)
    self.t_last, self.last_step = now, step
    terms = ' '.join(f'{k[5:]} {v:.4f}' for k, v in stats.items() if k.startswith('loss_'))
    bar_len = 20
    filled = int(bar_len * step / self.total)
    print(f'[{"#" * filled}{"." * (bar_len - filled)}] step {step}/{self.total} | '
          f'loss {stats["loss"]:.4f} ({terms}) | lr {stats["lr"]:.2e} | '
          f'{rate:.1f} episodes/s | ETA {_format_duration(eta)}', flush=True)
    self.write({'step': step, 'time': now, 'episodes_per_s': rate, **stats})


def _check_finite(step: int, stats: dict) -> None:
  for name, value in stats.items():
    if not math.isfinite(value):
      raise FloatingPointError(f'{name} is {value} at step {step}; stopping (the last '
                               f'checkpoint is kept as it was)')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir's latest checkpoint), then evaluates on the test split."""
  config_lib.validate(config)
  prepare_workdir(workdir)
  t = config.train
  ckpts = checkpointing.Checkpoints(workdir, max_to_keep=t.max_to_keep)
  latest = ckpts.latest_step()
  if latest is not None:
    ckpts.check_compatible(latest, config)

  n_dev = jax.local_device_count()
  per_device = parallel.check_divisible(t.batch_size // jax.process_count(), n_dev)
  train_split = datasets.load_split(config.data, config.data.train_split, training=True)
  test_split = datasets.load_split(config.data, config.data.test_split, training=False)

  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  if latest is not None:
    state = ckpts.restore(latest, jax.device_get(state))
    logging.info('resumed from %s at step %d', ckpts.directory, latest)
    print(f'resuming from step {latest} ({ckpts.directory})', flush=True)
  start = int(state.step)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  print(f'model {config.model.name} ({config.model.backbone}, {n_params / 1e6:.2f}M params) | '
        f'{n_dev} device(s) x {per_device} episodes | {config.data.shot}-shot | '
        f'train {config.data.train_split} ({len(train_split.classes)} classes) -> '
        f'test {config.data.test_split} ({len(test_split.classes)} classes)', flush=True)

  labels = trainable_labels(state.params, config)
  rstate = parallel.replicate(state)
  del state
  step_fn = parallel.make_train_step(model, tx, config, learning_rate_schedule(config), labels)
  sampler = EpisodeSampler(train_split.index, train_split.classes, config.data.shot, config.seed)
  loader = pipeline.EpisodeLoader(train_split.source, image_size=config.data.image_size,
                                  augment=config.data.augment, seed=config.seed,
                                  num_workers=config.data.num_workers)
  log = _Log(workdir, t.num_steps, start)
  local = n_dev * per_device
  batches = pipeline.train_batches(loader, sampler, start_step=start, num_steps=t.num_steps,
                                   shape=(n_dev, per_device), offset=jax.process_index() * local)
  for step, batch in pipeline.prefetch(batches, lambda sb: (sb[0], parallel.shard(sb[1]))):
    rstate, stats = step_fn(rstate, batch)
    done = step + 1
    is_last = done == t.num_steps
    if done % t.log_every == 0 or done % t.checkpoint_every == 0 or is_last:
      host = parallel.host_scalars(stats)  # The only host sync of the loop.
      _check_finite(done, host)
      if done % t.log_every == 0 or is_last:
        log.train(done, host, t.batch_size)
      if done % t.checkpoint_every == 0 or is_last:
        ckpts.save(done, parallel.unreplicate(rstate), config)

  report = eval_lib.evaluate_variables(model, parallel.eval_variables(rstate), config, test_split)
  report['step'] = t.num_steps
  print(eval_lib.format_report(report), flush=True)
  eval_lib.write_report(report, os.path.join(workdir, f'eval_step{t.num_steps}.json'))
  log.write({'step': t.num_steps, 'eval': {m: {k: r[k] for k in ('miou', 'fb_iou')}
                                            for m, r in report['results'].items()}})
  ckpts.close()
  return report
