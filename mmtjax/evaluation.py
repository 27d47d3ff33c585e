"""The evaluation loop: a fixed, seeded episode list through the compiled step, mIoU / FB-IoU
per eval mode (and its adapted twin), one report dict."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mmtjax import (
  adapt,
  feature_cache,
  methods,
  metrics,
  ops,
  parallel,
  progress,
  training_log,
)
from mmtjax.data import datasets, pipeline, protocols
from mmtjax.data import episodes as episode_lists


def _common_canvas(batch: dict) -> dict:
  """Pads a batch's original-resolution canvas to the largest of any process's (every
  process's shard of a pmap'd step must have one shape)."""
  canvas = batch['original_labels']
  size = int(np.max(multihost_utils.process_allgather(np.int32(canvas.shape[-1]))))
  pad = [(0, 0)] * (canvas.ndim - 2) + [(0, size - canvas.shape[-1])] * 2
  return {**batch, 'original_labels': np.pad(canvas, pad, constant_values=ops.IGNORE_LABEL)}


def eval_rows(method, config: ml_collections.ConfigDict) -> dict[str, tuple[dict, Any]]:
  """Report row -> (the module's test-time keyword arguments, adapt.Adaptation or None): the
  method's eval modes, and with config.eval.adapt on, an adapted twin of each ('<mode>+adapt')."""
  adaptation = adapt.from_config(config, method)
  rows = {name: (dict(mode), None) for name, mode in method.eval_modes.items()}
  if adaptation is not None:
    rows.update({name + adapt.ADAPT_SUFFIX: (dict(mode), adaptation) for name, mode in method.eval_modes.items()})
  return rows


def episode_loader(split: datasets.SplitData, protocol: protocols.Protocol,
                 config: ml_collections.ConfigDict) -> pipeline.EpisodeLoader:
  """The loader of a protocol's test episodes: its size and resize, no augmentation."""
  return pipeline.EpisodeLoader(split.source, image_size=protocol.image_size, augment='none', seed=protocol.seed,
                                num_workers=config.data.num_workers, resize=protocol.resize)


def _feature_cache(method, model, variables, config, kshot: str):
  """A fixed backbone's features once per image (feature_cache.py), or None: HSNet's vote splits
  the shots. (Adaptation reads them where its pseudo-episodes reuse the episode's images.)"""
  if kshot != 'model' and config.data.shot > 1:
    return None
  if method.feature_stop(config, training=False) is None:
    return None
  return feature_cache.for_run(method, model, parallel.unreplicate(variables), config, training=False)


def evaluate_variables(model, variables: Any, config: ml_collections.ConfigDict,
                       split: datasets.SplitData, *, split_name: str | None = None,
                       protocol: protocols.Protocol | None = None,
                       modes: dict[str, Any] | None = None, devices=None,
                       step_cache: dict | None = None) -> dict:
  """Runs a fixed, seeded episode list once per eval mode (e.g. memory transfer on and off).

  variables: replicated {'params', 'batch_stats', 'memory'} over `devices`
  (default: the local devices). Defaults: the config's test split, its test
  protocol (data.protocol) and eval_rows (the method's `eval_modes`, row name
  -> the module's test-time keyword arguments, and their adapted twins when
  config.eval.adapt is on); `modes` given: those rows, unadapted. k-shot
  episodes use the method's own k-shot path or HSNet's vote, as
  config.eval.kshot says. A `modes` value may also be a (mode, adapt.Adaptation) pair.

  The report's timing separates the first batch (it compiles the steps) from
  the rest: episodes_per_s counts the later batches, data loading included;
  host_wait_share is the share of their time the device waited on the host
  (for the next batch). PFENet's original-resolution scoring runs on the
  device, in the eval step.
  """
  e = config.eval
  protocol = protocol or datasets.test_protocol(datasets.test_data(config.data), e)
  kshot = e.get('kshot', 'model')
  n_dev = len(devices) if devices else jax.local_device_count()
  per_device = max(1, -(-e.batch_size // n_dev))
  episodes = episode_lists.protocol_episodes(split, datasets.test_data(config.data), protocol, config.data.shot)
  loader = episode_loader(split, protocol, config)
  method = methods.for_config(config)
  rows = eval_rows(method, config) if modes is None else {
      name: (tuple(mode) if isinstance(mode, tuple) else (mode, None)) for name, mode in modes.items()}
  output = 'original_counts' if protocol.original_resolution else 'counts'
  cache = {} if step_cache is None else step_cache
  steps = {}
  for name, (mode, adaptation) in rows.items():
    key = (name, tuple(sorted(mode.items())), output, kshot, adaptation)
    if key not in cache:
      cache[key] = parallel.make_eval_step(method, model, mode, devices, output, kshot, adaptation)
    steps[name] = cache[key]
  modes = rows
  meters = {name: metrics.SegmentationMeter() for name in modes}
  hist_totals: dict[str, dict[str, np.ndarray]] = {name: {} for name in modes}
  # Multi-process: every process scores its own slice of each global batch.
  batches = pipeline.eval_batches(loader, episodes, (n_dev, per_device), jax.process_index(),
                                  jax.process_count())
  features = _feature_cache(method, model, variables, config, kshot)
  if features is not None:
    batches = map(features.attach, batches)

  def put(b):
    if protocol.original_resolution and jax.process_count() > 1:
      return b, None  # The processes first agree on the canvas size (main thread, below).
    return b, parallel.shard(b, devices)

  start = time.perf_counter()
  first_batch_s = waited = 0.0
  meter = progress.Meter(f'  eval {split.dataset}/{split.name} {config.data.shot}-shot', len(episodes), 'episodes')
  per_batch = n_dev * per_device * jax.process_count()
  ready = iter(pipeline.prefetch(batches, put))
  for n_batch in itertools.count():
    t0 = time.perf_counter()
    item = next(ready, None)
    if n_batch:
      waited += time.perf_counter() - t0
    if item is None:
      break
    host, batch = item
    if batch is None:
      batch = parallel.shard(_common_canvas(host), devices)
    valid = np.asarray(host['valid']).reshape(-1).astype(bool)
    for name, step in steps.items():
      out, hists = step(variables, batch)
      out = parallel.local_array(out)
      for key, h in hists.items():
        h = parallel.local_array(h).reshape(valid.size, -1)[valid].sum(axis=0)
        hist_totals[name][key] = hist_totals[name].get(key, 0) + h
      meters[name].add(host['class_id'], out, host['valid'])
    if not n_batch:
      first_batch_s = time.perf_counter() - start
    meter.update(min(len(episodes), (n_batch + 1) * per_batch))  # its ETA leaves out the first (compiling) batch
    training_log.raise_if_sigterm()  # train.py's final evaluation: a SIGTERM whose exception was dropped
  total = time.perf_counter() - start
  if features is not None:
    logging.info('evaluation, fixed backbone: %s', features.stats())
  for m in meters.values():
    m.merge_processes(sorted({e.class_id for e in episodes}))  # the anchors' lists may hold other classes
  results = {name: m.result() for name, m in meters.items()}
  for name, totals in hist_totals.items():
    for key, total_counts in totals.items():  # e.g. how many target images chose each memory item
      total_counts = metrics.merge_process_sums(np.asarray(total_counts, np.int64))
      results[name][key] = [int(v) for v in total_counts]
  dataset = config.data.dataset if split_name else datasets.test_data(config.data).dataset
  steady = total - first_batch_s
  later = max(0, len(episodes) - n_dev * per_device * jax.process_count())
  timing = {'seconds': round(total, 2), 'first_batch_s': round(first_batch_s, 2),
            'episodes_per_s': round(later / steady, 2) if later and steady > 0 else None,
            'input_wait_s': round(waited, 3),
            'host_wait_share': round(waited / steady, 4) if later and steady > 0 else None}
  lines = episode_lists.episode_lines(episodes, split)
  tested = sorted({int(c) for r in results.values() for c in r['per_class']})
  for r in results.values():  # the same IoUs under the dataset's class names (per_class: by class id)
    r['per_class_by_name'] = {split.class_name(int(c)): v for c, v in r['per_class'].items()}
  report = {'dataset': dataset, 'split': split_name or config.data.test_split, 'shot': config.data.shot,
            'protocol': protocol.name, 'seed': protocol.seed, 'kshot': kshot, 'num_episodes': len(episodes),
            'episodes_sha256': episode_lists.list_sha256(lines),
            'class_names': {str(c): split.class_name(c) for c in tested}}
  if split.classes_note:
    report['classes_note'] = split.classes_note
  adapted = {a for _, a in rows.values() if a is not None}
  if len(adapted) == 1:  # the settings of the '+adapt' rows (the loss as run at this shot count)
    (adaptation,) = adapted
    report['adapt'] = {**dataclasses.asdict(adaptation), 'loss': adaptation.loss_for(config.data.shot)}
  elif adapted:  # several settings (a comparison): each row holds its own
    for name, (_, adaptation) in rows.items():
      if adaptation is not None:
        results[name]['adapt'] = {**dataclasses.asdict(adaptation), 'loss': adaptation.loss_for(config.data.shot)}
  distinct = len({(e.class_id, e.query, tuple(e.supports)) for e in episodes})
  if distinct < len(episodes):  # a small target: the seeded draws repeat (query, supports) pairs
    report['distinct_episodes'] = distinct
  return {**report, **timing, 'results': results}
