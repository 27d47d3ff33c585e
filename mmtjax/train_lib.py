"""Episodic training: data, state, the pmap'd step, logging, checkpoints, final eval."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from typing import Any, NamedTuple

import jax
import ml_collections

from mmtjax import (
  checkpointing,
  config_lib,
  evaluation,
  feature_cache,
  methods,
  parallel,
  pictures,
  report_files,
  reports,
  sweeps,
)
from mmtjax.data import datasets, pipeline, protocols
from mmtjax.data.episodes import EpisodeSampler
from mmtjax.errors import DivergedError, Terminated, UserError, warn
from mmtjax.models import backbones, get_model
from mmtjax.state import (
  backbone_frozen,
  create_train_state,
  learning_rate_schedule,
  trainable_labels,
  warmup_steps,
  with_pretrained,
)
from mmtjax.training_log import StopSignal, TrainingLog, between_logs, first_nonfinite, say


def check_workdir(workdir: str) -> None:
  """A clear error if workdir cannot be written (or created), creating nothing: the workdir is
  made once every input is checked (train's lock)."""
  where = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(where) and not os.path.isdir(where):
    raise UserError(f'workdir {workdir} is a file, not a folder; choose another --workdir')
  parent = where
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f'workdir {workdir} is not writable: {parent} does not let this user write in it')


def prepare_workdir(workdir: str) -> None:
  """Creates workdir; a clear error if it cannot be written."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise UserError(f'workdir {workdir} is not writable: {e.strerror}') from None


def smoke_episodes(config) -> int | None:
  """The episode cap of a smoke run, else None.

  A run of train.num_steps <= train.smoke_steps checks the path, not the
  model: its validation and final test use at most train.smoke_episodes
  episodes each (the first ones of the same lists), so a one-step run does
  not spend minutes evaluating an untrained model.
  """
  t = config.train
  return t.get('smoke_episodes', 16) if 0 < t.num_steps <= t.get('smoke_steps', 0) else None


def _capped(n: int | None, cap: int | None) -> int | None:
  return n if cap is None else cap if n is None else min(n, cap)


def _val_protocol(config) -> protocols.Protocol:
  return protocols.Protocol('validation', _capped(config.eval.val_episodes, smoke_episodes(config)),
                            config.eval.seed + 1, config.data.image_size, 'square')


def _validate(model, rstate, config, val_split, devices, step_cache: dict) -> float:
  """mIoU on the validation episodes (the model's first eval mode), for the best checkpoint."""
  mode, kwargs = next(iter(methods.for_config(config).eval_modes.items()))
  report = evaluation.evaluate_variables(
      model, parallel.eval_variables(rstate), config, val_split, split_name=config.data.val_split,
      protocol=_val_protocol(config), modes={mode: kwargs}, devices=devices, step_cache=step_cache)
  return report['results'][mode]['miou']


def _log_panels(log: TrainingLog, step: int, prefix: str, model, rstate, config, split, protocol,
                step_cache: dict) -> None:
  """train.log_panels prediction panels of the split's first episodes, as TensorBoard images."""
  count = config.train.get('log_panels', 0)
  if count and jax.process_index() == 0:
    host = parallel.unreplicate(parallel.eval_variables(rstate))
    log.panels(step, prefix, pictures.prediction_panels(model, host, config, split, protocol, count,
                                                        step_cache=step_cache))


class TrainResult(NamedTuple):
  model: Any
  state: Any  # Replicated TrainState.
  step: int  # The last step done.
  num_steps: int  # The run's length (resolved from train.epochs when set).


def resolve_num_steps(config: ml_collections.ConfigDict, train_split: datasets.SplitData
                      ) -> ml_collections.ConfigDict:
  """With train.epochs > 0, a copy whose num_steps = epochs x (training images // batch size).

  An epoch is one pass over the images that hold a training class (PFENet's
  definition: each image once, with one of its classes).
  """
  if config.train.get('epochs', 0) <= 0:
    return config
  images = {int(i) for c in train_split.classes for i in train_split.index.get(c, ())}
  resolved = config.copy_and_resolve_references()
  resolved.train.num_steps = config.train.epochs * max(1, len(images) // config.train.batch_size)
  return resolved


def train(config: ml_collections.ConfigDict, workdir: str, *, devices=None,
          stop_after_steps: int | None = None) -> TrainResult:
  """Trains, resuming from workdir's newest readable checkpoint.

  devices: this process's devices to train on (default: all local devices).
  stop_after_steps: train at most this many steps in this run, then checkpoint
    (the next run resumes exactly there; for time-limited jobs).
  Returns the model, the replicated TrainState, the last step done (below
  num_steps when stopped early by SIGTERM or stop_after_steps) and num_steps.
  """
  _check_args(config, workdir, stop_after_steps)
  splits = _training_splits(config)
  prepare_workdir(workdir)
  with checkpointing.WorkdirLock(workdir):
    return _train(config, workdir, *splits, devices=devices, stop_after_steps=stop_after_steps)


def _training_splits(config) -> tuple[datasets.SplitData, datasets.SplitData | None]:
  """The training and validation splits, loaded (built on first use) and checked before the
  workdir is touched: data that cannot serve the run stops it with nothing written there."""
  train_split = datasets.load_split(config.data, config.data.train_split, training=True)
  val_split = (datasets.load_split(config.data, config.data.val_split, training=False)
               if config.train.eval_every > 0 else None)
  EpisodeSampler(train_split.index, train_split.classes, config.data.shot, config.seed)  # raises if it cannot
  return train_split, val_split


def _check_args(config, workdir: str, stop_after_steps: int | None) -> None:
  if not methods.for_config(config).trainable:
    raise UserError(f'model {config.model.name} is training-free: it needs no training; evaluate it directly '
                    f'with evaluate.py and the same --config (--workdir: where its reports go)')
  datasets.resolve(config, training=True)
  config_lib.validate(config)
  if stop_after_steps is not None and stop_after_steps < 1:
    raise UserError(f'--stop_after_steps must be >= 1, got {stop_after_steps}')
  check_workdir(workdir)


def _truncate_metrics(workdir: str, step: int) -> None:
  """Drops metrics.jsonl records past `step` (written after the checkpoint a run resumes from),
  so each step appears once and in order."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue  # A line cut by a crash.
    if record.get('step', 0) <= step:
      keep.append(json.dumps(record) + '\n')
  if len(keep) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(keep)
    os.replace(tmp, path)


def _train(config, workdir, train_split, val_split, *, devices, stop_after_steps) -> TrainResult:
  t = config.train
  if devices is not None and jax.process_count() > 1:
    raise UserError('devices= selects devices of a single-process run; multi-process runs use all')
  n_dev = len(devices) if devices else jax.local_device_count()
  per_device = parallel.check_divisible(t.batch_size, n_dev * jax.process_count())
  config = resolve_num_steps(config, train_split)
  t = config.train
  ckpts = checkpointing.Checkpoints(workdir, max_to_keep=t.max_to_keep)
  best_ckpts = (checkpointing.Checkpoints(workdir, subdir=checkpointing.BEST_SUBDIR, best_metric='miou')
                if t.eval_every > 0 else None)

  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  latest, restored = ckpts.restore_latest(jax.device_get(state), config)
  if latest is not None:
    state = restored
    logging.info('resumed from %s at step %d', ckpts.directory, latest)
    say(f'resuming from step {latest} ({ckpts.directory})')
  elif config.model.get('pretrained'):
    state = with_pretrained(state, config, note=say)
    say(f'backbone weights from {config.model.pretrained}')
  elif backbones.is_vit(config.model.get('backbone', '')) and backbone_frozen(config.model):
    warn(f'{config.model.backbone} is frozen (model.freeze_backbone) but has no pretrained weights: training '
         f'runs on a random backbone; give --config.model.pretrained=PATH (README: Foundation backbones)')
  start = int(state.step)
  _truncate_metrics(workdir, start)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  say(f'model {config.model.name} ({config.model.get("backbone", "-")}, {n_params / 1e6:.2f}M params) | '
      f'{jax.process_count()} process(es) x {n_dev} device(s) x {per_device} episodes | '
      f'{config.data.shot}-shot | train {config.data.train_split} ({len(train_split.classes)} classes)')
  if train_split.classes_note:
    say(f'classes: {train_split.classes_note}')
  cap = smoke_episodes(config)
  if cap is not None:
    say(f'smoke run (train.num_steps={t.num_steps} <= train.smoke_steps={t.smoke_steps}): validation and the '
        f'final test use at most {cap} episodes each (train.smoke_steps=0: the full counts)')
  if 0 < t.num_steps <= t.warmup_steps:
    warn(f'train.num_steps={t.num_steps} is not longer than the warm-up (train.warmup_steps={t.warmup_steps}): '
         f'the warm-up is clipped to {warmup_steps(t)} steps')

  labels = trainable_labels(state.params, config)
  rstate = parallel.replicate(state, devices)
  del state
  step_fn = parallel.make_train_step(model, tx, config, learning_rate_schedule(config), labels, devices)
  sampler = EpisodeSampler(train_split.index, train_split.classes, config.data.shot, config.seed)
  loader = pipeline.EpisodeLoader(train_split.source, image_size=config.data.image_size,
                                  augment=config.data.augment, seed=config.seed,
                                  num_workers=config.data.num_workers)
  log = TrainingLog(workdir, t.num_steps, start, resumed=latest is not None)
  local = n_dev * per_device
  end = t.num_steps if stop_after_steps is None else min(t.num_steps, start + stop_after_steps)
  batches = pipeline.train_batches(loader, sampler, start_step=start, num_steps=end,
                                   shape=(n_dev, per_device), offset=jax.process_index() * local)
  # A fixed backbone (frozen, no batch statistics) runs once per distinct image (feature_cache.py).
  features = feature_cache.for_run(methods.for_config(config), model,
                                   parallel.unreplicate(parallel.eval_variables(rstate)), config, training=True)
  if features is not None:
    batches = ((step, features.attach(batch)) for step, batch in batches)
  pending: list[tuple[int, dict]] = []  # Per-step metrics not yet checked on the host.
  val_steps: dict = {}  # Validation's compiled eval step, kept across validations.
  done = start
  with StopSignal() as stop, contextlib.ExitStack() as cleanup:
    cleanup.callback(ckpts.close)
    cleanup.callback(log.close)
    if features is not None:
      cleanup.callback(lambda: logging.info('training, frozen backbone: %s', features.stats()))
    if best_ckpts:
      cleanup.callback(best_ckpts.close)
    for step, batch in pipeline.prefetch(batches, lambda sb: (sb[0], parallel.shard(sb[1], devices))):
      with between_logs():
        rstate, stats = step_fn(rstate, batch)
        done = step + 1
        ckpts.check()  # An asynchronous save that failed (disk full) stops training here.
        pending.append((done, stats))
      preempted = stop.should_stop(done)
      is_last = done == end
      is_ckpt = done % t.checkpoint_every == 0 or is_last or preempted
      is_log = done % t.log_every == 0 or done == t.num_steps
      is_eval = best_ckpts is not None and (done % t.eval_every == 0 or done == t.num_steps)
      if not (is_ckpt or is_log or is_eval):
        continue
      bad = first_nonfinite(pending)  # Every step since the last check.
      if bad:
        last = ckpts.latest_step()
        kept = (f'the last checkpoint, step {last}, is kept as it was' if last is not None
                else 'no checkpoint was written')
        raise DivergedError(
            f'{bad[1]} is {bad[2]} at step {bad[0]}; stopping without saving ({kept}); '
            f'lower train.lr or set train.grad_clip')
      host = parallel.host_scalars(stats)
      pending.clear()
      if is_log:
        log.train(done, host, t.batch_size)
      if is_ckpt:
        ckpts.save(done, parallel.unreplicate(rstate), config)
      if is_eval:
        miou = _validate(model, rstate, config, val_split, devices, val_steps)
        log.write({'step': done, 'val': {'split': config.data.val_split, 'miou': miou}})
        log.scalars(done, {'val/miou': miou})
        _log_panels(log, done, 'val', model, rstate, config, val_split, _val_protocol(config), val_steps)
        say(f'validation {config.data.val_split} ({_val_protocol(config).num_episodes} episodes): mIoU {miou:.2f}')
        best_ckpts.save(done, parallel.unreplicate(rstate), config, metrics={'miou': miou})
      if preempted:
        say(f'received SIGTERM: saved step {done} to {ckpts.directory}; stopping')
        return TrainResult(model, rstate, done, t.num_steps)
  if done < t.num_steps:
    say(f'stopped after step {done} of {t.num_steps} (stop_after_steps={stop_after_steps}); '
        f'rerun the same command to continue')
  return TrainResult(model, rstate, done, t.num_steps)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, devices=None,
                       stop_after_steps: int | None = None) -> dict | None:
  """`train`, then the test-split evaluation of the final state (see `train` for the args).

  Returns the test report, or None when training stopped early. SIGTERM
  during the evaluation stops it (the trained state is already saved).
  """
  _check_args(config, workdir, stop_after_steps)
  splits = _training_splits(config)
  test_data = datasets.test_data(config.data)
  test_split = datasets.load_split(test_data, config.data.test_split, training=False)
  prepare_workdir(workdir)
  with checkpointing.WorkdirLock(workdir):
    model, rstate, done, num_steps = _train(config, workdir, *splits, devices=devices,
                                            stop_after_steps=stop_after_steps)
    if done < num_steps:
      return None
    try:
      return _final_evaluation(model, rstate, config, workdir, num_steps, devices, test_split)
    except Terminated:
      say(f'received SIGTERM during the final evaluation: training is complete and saved (step '
          f'{num_steps}, {os.path.join(workdir, checkpointing.SUBDIR)}); run evaluate.py with the same '
          f'--config and --workdir for the test report')
      return None


def _final_evaluation(model, rstate, config, workdir: str, num_steps: int, devices,
                      test_split: datasets.SplitData) -> dict:
  test_data = datasets.test_data(config.data)
  say(f'testing on {test_data.dataset}/{config.data.test_split} ({len(test_split.classes)} classes: '
      f'{", ".join(test_split.class_name(c) for c in test_split.classes)})')
  protocol = datasets.test_protocol(test_data, config.eval)
  protocol = dataclasses.replace(protocol, num_episodes=_capped(protocol.num_episodes, smoke_episodes(config)))
  report = evaluation.evaluate_variables(model, parallel.eval_variables(rstate), config, test_split,
                                       protocol=protocol, devices=devices)
  report.update(step=num_steps, checkpoint=checkpointing.SUBDIR, episode_seed=report['seed'])
  say(report_files.format_report(report))
  if jax.process_index() == 0:  # the files evaluate.py writes for the same checkpoint
    method = config.model.name
    caption = (f"{reports.METHOD_NAMES.get(method, method)}, latest checkpoint, step {num_steps} (train.py's "
               f"final test); test-episode seed {report['seed']}; k-shot: {config.eval.get('kshot', 'model')}; "
               f"protocol: {report['dataset']} {report['protocol']}.")
    files = report_files.report_files(None, workdir, report_files.evaluation_name(report, 'latest'))
    sweeps.publish(report, [report], files, config=config, targets={report['dataset']: config},
                     splits={report['dataset']: test_split}, model=model,
                     host=parallel.unreplicate(parallel.eval_variables(rstate)), caption=caption)
    say(f'wrote {files.folder}/: ' + ', '.join(os.path.relpath(p, files.folder)
                                             for p in report_files.written_files(report)))
  log = TrainingLog(workdir, num_steps, num_steps)
  log.write({'step': num_steps, 'eval': {m: {k: r[k] for k in ('miou', 'fb_iou')}
                                         for m, r in report['results'].items()}})
  log.scalars(num_steps, {f'test/{m}/{k}': r[k] for m, r in report['results'].items() for k in ('miou', 'fb_iou')})
  _log_panels(log, num_steps, 'test', model, rstate, config, test_split,
              datasets.test_protocol(test_data, config.eval), {})
  log.close()
  return report
