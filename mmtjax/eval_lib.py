"""Evaluation: a fixed, seeded episode list, mIoU / FB-IoU per memory mode, reports."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from mmtjax import checkpointing, metrics, parallel
from mmtjax.data import datasets, pipeline, protocols
from mmtjax.data.episodes import EpisodeSampler
from mmtjax.models import get_model
from mmtjax.state import create_train_state

MODES = {'memory_on': True, 'memory_off': False}


def eval_modes(model_name: str) -> dict[str, bool]:
  """Report rows -> the model's `transfer` flag: MMT with the memory transfer on and off,
  the baseline without it, MM-Net (whose meta-class memory is part of the network) once."""
  return {'mmt': MODES, 'baseline': {'memory_off': False}}.get(model_name, {model_name: True})


def evaluate_variables(model, variables: Any, config: ml_collections.ConfigDict,
                       split: datasets.SplitData, *, split_name: str | None = None,
                       protocol: protocols.Protocol | None = None,
                       modes: dict[str, bool] | None = None, devices=None,
                       step_cache: dict | None = None) -> dict:
  """Runs a fixed, seeded episode list once per eval mode (e.g. memory transfer on and off).

  variables: replicated {'params', 'batch_stats', 'memory'} over `devices`
  (default: the local devices). Defaults: the config's test split, its test
  protocol (data.protocol) and the model's `eval_modes`.
  """
  e = config.eval
  protocol = protocol or protocols.test_protocol(config.data, e)
  n_dev = len(devices) if devices else jax.local_device_count()
  per_device = max(1, -(-e.batch_size // n_dev))
  sampler = EpisodeSampler(split.index, split.classes, config.data.shot, seed=protocol.seed)
  episodes = sampler.test_list(protocol.num_episodes, protocol.order)
  loader = pipeline.EpisodeLoader(split.source, image_size=protocol.image_size, augment='none',
                                  seed=protocol.seed, num_workers=config.data.num_workers,
                                  resize=protocol.resize)
  if modes is None:
    modes = eval_modes(config.model.name)
  output = 'logit_diff' if protocol.original_resolution else 'counts'
  cache = {} if step_cache is None else step_cache
  steps = {}
  for name, transfer in modes.items():
    if (transfer, output) not in cache:
      cache[(transfer, output)] = parallel.make_eval_step(model, transfer, devices, output)
    steps[name] = cache[(transfer, output)]
  meters = {name: metrics.SegmentationMeter() for name in modes}
  start = time.time()
  # Multi-process: every process scores its own slice of each global batch.
  batches = pipeline.eval_batches(loader, episodes, (n_dev, per_device), jax.process_index(),
                                  jax.process_count())

  def put(b):
    return b, parallel.shard({k: v for k, v in b.items() if k != 'original_labels'}, devices)

  for host, batch in pipeline.prefetch(batches, put):
    for name, step in steps.items():
      out = parallel.local_array(step(variables, batch))
      if protocol.original_resolution:
        out = np.stack([metrics.original_resolution_counts(d, m) for d, m in
                        zip(out.reshape(-1, *out.shape[2:]), host['original_labels'])])
      meters[name].add(host['class_id'], out, host['valid'])
  for m in meters.values():
    m.merge_processes(split.classes)
  results = {name: m.result() for name, m in meters.items()}
  return {'split': split_name or config.data.test_split, 'shot': config.data.shot,
          'protocol': protocol.name, 'num_episodes': len(episodes),
          'seconds': round(time.time() - start, 2), 'results': results}


def format_report(report: dict) -> str:
  """A plain-text table: one row per memory mode, one column per class."""
  modes = list(report['results'])
  classes = sorted({c for m in modes for c in report['results'][m]['per_class']}, key=int)
  head = f"{'mode':<11} {'mIoU':>6} {'FB-IoU':>7} " + ' '.join(f'{"c" + c:>6}' for c in classes)
  lines = [f"{report['split']}, {report['shot']}-shot, {report['num_episodes']} episodes", head]
  for m in modes:
    r = report['results'][m]
    cells = ' '.join(f"{r['per_class'].get(c, float('nan')):6.1f}" for c in classes)
    lines.append(f"{m:<11} {r['miou']:6.2f} {r['fb_iou']:7.2f} {cells}")
  return '\n'.join(lines)


def write_report(report: dict, path: str) -> None:
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(report, f, indent=2)
  os.replace(tmp, path)


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
             output: str | None = None, best: bool = False) -> dict:
  """Restores a checkpoint of `workdir` (latest, `step`, or the best-by-validation one) and
  evaluates it on the config's test episodes."""
  subdir = checkpointing.BEST_SUBDIR if best else checkpointing.SUBDIR
  ckpt_dir = os.path.join(workdir, subdir)
  if not os.path.isdir(ckpt_dir):
    raise checkpointing.CheckpointError(f'no checkpoints in {workdir} (expected {ckpt_dir})')
  ckpts = checkpointing.Checkpoints(workdir, create=False, subdir=subdir)
  if step is not None and step not in ckpts.all_steps():
    raise checkpointing.CheckpointError(f'no checkpoint for step {step} in {ckpt_dir}; '
                                        f'available: {ckpts.all_steps()}')
  step = ckpts.latest_step() if step is None else step
  if step is None:
    raise checkpointing.CheckpointError(f'no checkpoints in {ckpt_dir}')
  ckpts.check_compatible(step, config)
  model = get_model(config, axis_name=parallel.AXIS)
  template, _ = create_train_state(model, config)
  state = ckpts.restore(step, jax.device_get(template))
  split = datasets.load_split(config.data, config.data.test_split, training=False)
  logging.info('evaluating step %d on %s', step, config.data.test_split)
  report = evaluate_variables(model, parallel.replicate(parallel.eval_variables(state)), config, split)
  report['step'] = step
  report['checkpoint'] = subdir
  name = f'eval_best_step{step}.json' if best else f'eval_step{step}.json'
  if jax.process_index() == 0:
    write_report(report, output or os.path.join(workdir, name))
  return report
