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

from mmtjax import checkpointing, config_lib, methods, metrics, parallel, visualize
from mmtjax.data import datasets, pipeline, protocols
from mmtjax.data import episodes as episode_lists
from mmtjax.errors import UserError
from mmtjax.models import get_model
from mmtjax.state import create_train_state


def evaluate_variables(model, variables: Any, config: ml_collections.ConfigDict,
                       split: datasets.SplitData, *, split_name: str | None = None,
                       protocol: protocols.Protocol | None = None,
                       modes: dict[str, dict] | None = None, devices=None,
                       step_cache: dict | None = None) -> dict:
  """Runs a fixed, seeded episode list once per eval mode (e.g. memory transfer on and off).

  variables: replicated {'params', 'batch_stats', 'memory'} over `devices`
  (default: the local devices). Defaults: the config's test split, its test
  protocol (data.protocol) and the method's `eval_modes` (row name -> the
  module's test-time keyword arguments).
  """
  e = config.eval
  protocol = protocol or protocols.test_protocol(datasets.test_data(config.data), e)
  n_dev = len(devices) if devices else jax.local_device_count()
  per_device = max(1, -(-e.batch_size // n_dev))
  episodes = episode_lists.protocol_episodes(split, datasets.test_data(config.data), protocol, config.data.shot)
  loader = pipeline.EpisodeLoader(split.source, image_size=protocol.image_size, augment='none',
                                  seed=protocol.seed, num_workers=config.data.num_workers,
                                  resize=protocol.resize)
  method = methods.for_config(config)
  if modes is None:
    modes = dict(method.eval_modes)
  output = 'logit_diff' if protocol.original_resolution else 'counts'
  cache = {} if step_cache is None else step_cache
  steps = {}
  for name, mode in modes.items():
    key = (name, tuple(sorted(mode.items())), output)
    if key not in cache:
      cache[key] = parallel.make_eval_step(method, model, mode, devices, output)
    steps[name] = cache[key]
  meters = {name: metrics.SegmentationMeter() for name in modes}
  hist_totals: dict[str, dict[str, np.ndarray]] = {name: {} for name in modes}
  start = time.time()
  # Multi-process: every process scores its own slice of each global batch.
  batches = pipeline.eval_batches(loader, episodes, (n_dev, per_device), jax.process_index(),
                                  jax.process_count())

  def put(b):
    return b, parallel.shard({k: v for k, v in b.items() if k != 'original_labels'}, devices)

  for host, batch in pipeline.prefetch(batches, put):
    valid = np.asarray(host['valid']).reshape(-1).astype(bool)
    for name, step in steps.items():
      out, hists = step(variables, batch)
      out = parallel.local_array(out)
      for key, h in hists.items():
        h = parallel.local_array(h).reshape(valid.size, -1)[valid].sum(axis=0)
        hist_totals[name][key] = hist_totals[name].get(key, 0) + h
      if protocol.original_resolution:
        out = np.stack([metrics.original_resolution_counts(d, m) for d, m in
                        zip(out.reshape(-1, *out.shape[2:]), host['original_labels'])])
      meters[name].add(host['class_id'], out, host['valid'])
  for m in meters.values():
    m.merge_processes(sorted({e.class_id for e in episodes}))  # the anchors' lists may hold other classes
  results = {name: m.result() for name, m in meters.items()}
  for name, totals in hist_totals.items():
    for key, total in totals.items():  # e.g. how many target images chose each memory item
      total = metrics.merge_process_sums(np.asarray(total, np.int64))
      results[name][key] = [int(v) for v in total]
  dataset = config.data.dataset if split_name else datasets.test_data(config.data).dataset
  return {'dataset': dataset, 'split': split_name or config.data.test_split, 'shot': config.data.shot,
          'protocol': protocol.name, 'num_episodes': len(episodes),
          'episodes_sha256': episode_lists.list_sha256(episode_lists.episode_lines(episodes, split)),
          'seconds': round(time.time() - start, 2), 'results': results}


def style_memory_bank(variables: Any) -> dict | None:
  """The style memory's bank {'means', 'stds', ...} (host arrays) in a model's variables, or None."""
  bank = variables.get('memory', {}).get('style_memory')
  return None if bank is None else {k: np.asarray(v) for k, v in bank.items()}


def image_style_stats(model, variables: Any, split: datasets.SplitData, image_size: int,
                      num_images: int = 200, batch: int = 50) -> np.ndarray:
  """Channel means [n, C] at the memory stage of the split's first `num_images` images (host variables)."""
  n = min(num_images, len(split.source))
  fn = jax.jit(lambda v, x: model.apply(v, x, method='style_stats')[0])
  loader = pipeline.EpisodeLoader(split.source, image_size=image_size, augment='none', seed=0, num_workers=2)
  out = []
  for start in range(0, n, batch):
    images = np.stack([loader.image(i) for i in range(start, min(n, start + batch))])
    out.append(np.asarray(fn(variables, images)))
  return np.concatenate(out)


def memory_picture(model, variables: Any, config: ml_collections.ConfigDict, path: str,
                   source: datasets.SplitData, target: datasets.SplitData | None) -> str | None:
  """Writes the memory PCA picture (visualize.memory_pca_png) for a model with a style memory.

  variables: host (unreplicated) variables. Returns the path, or None when
  the model keeps no style memory.
  """
  bank = style_memory_bank(variables)
  if bank is None:
    return None
  size = config.data.image_size
  src = image_style_stats(model, variables, source, size)
  tgt = image_style_stats(model, variables, target, size) if target is not None else None
  visualize.memory_pca_png(path, bank['means'], src, tgt,
                           title=f'{len(bank["means"])} items, {config.data.train_split} vs '
                                 f'{config.data.test_split}')
  return path


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
  for m in modes:
    for key, counts in report['results'][m].items():
      if key.startswith('memory_item_'):
        used = sum(1 for c in counts if c)
        lines.append(f'{m}: images per memory item ({key[len("memory_item_"):]}): {counts} '
                     f'({used} of {len(counts)} items used)')
  return '\n'.join(lines)


def report_name(report: dict, kind: str, ext: str = 'json') -> str:
  """A file name holding everything that tells two evaluations of one run apart:
  checkpoint kind, step, dataset (when not the embedded one), split, shot count and protocol."""
  dataset = report.get('dataset', 'mmtjax_shapes')
  where = report['split'] if dataset == 'mmtjax_shapes' else f"{dataset}-{report['split']}"
  return f"eval_{kind}_step{report['step']}_{where}_{report['shot']}shot_{report['protocol']}.{ext}"


def unused_path(path: str) -> str:
  """`path`, or `stem.1.ext`, `stem.2.ext`, ... when it exists: a report is never replaced."""
  stem, ext = os.path.splitext(path)
  n = 1
  while os.path.exists(path):
    path, n = f'{stem}.{n}{ext}', n + 1
  return path


def write_report(report: dict, path: str) -> str:
  """Writes the JSON report atomically to `path` (never replacing a file); returns where it wrote."""
  if os.path.isdir(path):
    raise UserError(f'--output {path} is a directory; give a file name (e.g. {path}/report.json)')
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f'cannot write the report to {path}: directory {parent} does not exist')
  path = unused_path(path)
  tmp = f'{path}.tmp'
  try:
    with open(tmp, 'w') as f:
      json.dump(report, f, indent=2)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise UserError(f'cannot write the report to {path}: {e.strerror}') from None
  return path


def _restore_for_eval(workdir: str, subdir: str, step: int | None, config, template,
                      attempts: int = 5) -> tuple[int, Any]:
  """(step, host state) of the requested checkpoint, or of the latest one.

  A trainer running in the same workdir may rotate the latest checkpoint away
  between listing and reading it: without an explicit step, a checkpoint that
  vanished is replaced by the new latest one (a few attempts).
  """
  ckpt_dir = os.path.join(workdir, subdir)
  for attempt in range(attempts):
    ckpts = checkpointing.Checkpoints(workdir, create=False, subdir=subdir)
    try:
      if step is not None and step not in ckpts.all_steps():
        raise checkpointing.CheckpointError(f'no checkpoint for step {step} in {ckpt_dir}; '
                                            f'available: {ckpts.all_steps()}')
      chosen = ckpts.latest_step() if step is None else step
      if chosen is None:
        raise checkpointing.CheckpointError(f'no checkpoints in {ckpt_dir}')
      try:
        ckpts.check_compatible(chosen, config)
        return chosen, ckpts.restore(chosen, template)
      except checkpointing.CheckpointError:
        rotated = step is None and not os.path.isdir(os.path.join(ckpt_dir, str(chosen)))
        if not rotated or attempt == attempts - 1:
          raise
        time.sleep(0.5)
    finally:
      ckpts.close()
  raise AssertionError('unreachable')


def evaluate(config: ml_collections.ConfigDict, workdir: str, *, step: int | None = None,
             output: str | None = None, best: bool = False) -> dict:
  """Restores a checkpoint of `workdir` (latest, `step`, or the best-by-validation one) and
  evaluates it on the config's test episodes."""
  datasets.resolve(config, training=False)
  config_lib.validate(config)
  subdir = checkpointing.BEST_SUBDIR if best else checkpointing.SUBDIR
  ckpt_dir = os.path.join(workdir, subdir)
  if not os.path.isdir(ckpt_dir):
    raise checkpointing.CheckpointError(f'no checkpoints in {workdir} (expected {ckpt_dir})')
  model = get_model(config, axis_name=parallel.AXIS)
  template, _ = create_train_state(model, config)
  step, state = _restore_for_eval(workdir, subdir, step, config, jax.device_get(template))
  split = datasets.load_split(datasets.test_data(config.data), config.data.test_split, training=False)
  logging.info('evaluating step %d on %s', step, config.data.test_split)
  report = evaluate_variables(model, parallel.replicate(parallel.eval_variables(state)), config, split)
  report['step'] = step
  report['checkpoint'] = subdir
  if jax.process_index() == 0:
    kind = 'best' if best else 'latest'
    report['report_path'] = write_report(report, output or os.path.join(workdir, report_name(report, kind)))
    source = datasets.load_split(config.data, config.data.train_split, training=False)
    picture = memory_picture(model, parallel.eval_variables(state), config,
                             unused_path(os.path.splitext(report['report_path'])[0] + '_memory.png'),
                             source, split)
    if picture:
      report['memory_picture'] = picture
  return report
