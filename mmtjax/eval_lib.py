"""Evaluation: a fixed, seeded episode list, mIoU / FB-IoU per memory mode, reports."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mmtjax import (
  adapt,
  checkpointing,
  config_lib,
  feature_cache,
  methods,
  metrics,
  ops,
  parallel,
  progress,
  reports,
  visualize,
)
from mmtjax.data import datasets, pipeline, protocols, transforms
from mmtjax.data import episodes as episode_lists
from mmtjax.errors import UserError, warn
from mmtjax.models import get_model
from mmtjax.state import create_train_state, untrained_variables

PANEL_MAX_SIDE = 480  # episode panels show images at their own resolution, the longer side capped here
def eval_rows(method, config: ml_collections.ConfigDict) -> dict[str, tuple[dict, Any]]:
  """Report row -> (the module's test-time keyword arguments, adapt.Adaptation or None): the
  method's eval modes, and with config.eval.adapt on, an adapted twin of each ('<mode>+adapt')."""
  adaptation = adapt.from_config(config, method)
  rows = {name: (dict(mode), None) for name, mode in method.eval_modes.items()}
  if adaptation is not None:
    rows.update({name + adapt.ADAPT_SUFFIX: (dict(mode), adaptation) for name, mode in method.eval_modes.items()})
  return rows


def _test_loader(split: datasets.SplitData, protocol: protocols.Protocol,
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
  protocol = protocol or protocols.test_protocol(datasets.test_data(config.data), e)
  kshot = e.get('kshot', 'model')
  n_dev = len(devices) if devices else jax.local_device_count()
  per_device = max(1, -(-e.batch_size // n_dev))
  episodes = episode_lists.protocol_episodes(split, datasets.test_data(config.data), protocol, config.data.shot)
  loader = _test_loader(split, protocol, config)
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


def _common_canvas(batch: dict) -> dict:
  """Pads a batch's original-resolution canvas to the largest of any process's (every
  process's shard of a pmap'd step must have one shape)."""
  canvas = batch['original_labels']
  size = int(np.max(multihost_utils.process_allgather(np.int32(canvas.shape[-1]))))
  pad = [(0, 0)] * (canvas.ndim - 2) + [(0, size - canvas.shape[-1])] * 2
  return {**batch, 'original_labels': np.pad(canvas, pad, constant_values=ops.IGNORE_LABEL)}


def prediction_panels(model, variables: Any, config: ml_collections.ConfigDict, split: datasets.SplitData,
                      protocol: protocols.Protocol, count: int, directory: str | None = None,
                      prefix: str = '', step_cache: dict | None = None,
                      label: str | None = None) -> list[tuple[str, Any]]:
  """Panels (visualize.episode_panel) of the first `count` test episodes: one per episode, the
  prediction of every eval mode side by side (MMT: memory on and off; adapted rows too).

  variables: host (unreplicated). The prediction is the evaluation's own (the
  same eval step, in 'logits' output), resized bilinearly to the query's
  original resolution (longer side capped at PANEL_MAX_SIDE) and shown there
  over the original image and mask, supports likewise; each mode's IoU is the
  episode's foreground IoU at that resolution. `label`: the dataset's name in
  titles (a sweep's label, e.g. ph2; default the split's dataset). Returns
  [(name, PIL image)]; with `directory`, also written there as
  <prefix>_episode<i>.png (the names are then those paths).
  """
  episodes = episode_lists.protocol_episodes(split, datasets.test_data(config.data), protocol,
                                             config.data.shot)[:count]
  if not episodes:
    return []
  loader = _test_loader(split, protocol, config)
  device = jax.local_devices()[:1]
  batch = loader.batch(episodes, [(-1, i) for i in range(len(episodes))], (1, len(episodes)))
  for key in ('original_labels', 'original_sizes'):  # Panels are scored at the input size.
    batch.pop(key, None)
  method = methods.for_config(config)
  kshot = config.eval.get('kshot', 'model')
  replicated = parallel.replicate(variables, device)
  cache = {} if step_cache is None else step_cache
  if directory:
    os.makedirs(directory, exist_ok=True)

  def originals(index: int, class_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The record's image (uint8) and episode mask at its own resolution, capped."""
    record = split.source[int(index)]
    image = transforms.to_rgb(transforms.decode_image(record['image'], f'image of example {index}'))
    label = transforms.decode_image(record['label'], f'label of example {index}')
    mask = transforms.class_mask(label, 1 if record.get('binary', False) else class_id)
    if max(mask.shape) > PANEL_MAX_SIDE:
      image, mask = transforms.resize_longer_side(image, mask, PANEL_MAX_SIDE)
    return image, mask

  logits = {}
  for name, mode in method.eval_modes.items():
    key = ('panels', name, tuple(sorted(mode.items())), kshot)
    if key not in cache:
      cache[key] = parallel.make_eval_step(method, model, mode, device, 'logits', kshot)
    out, _ = cache[key](replicated, parallel.shard(batch, device))
    logits[name] = parallel.local_array(out)[0]
  out = []
  for i, ep in enumerate(episodes):
    query, truth = originals(ep.query, ep.class_id)
    preds, captions = {}, {}
    for name, episode_logits in logits.items():
      preds[name] = np.asarray(metrics.episode_prediction(episode_logits[i:i + 1], truth.shape))[0]
      counts = metrics.prediction_counts(preds[name][None], truth[None])
      captions[name] = f'{name}: IoU {100.0 * counts[0, 0] / max(counts[0, 1], 1):.1f}'
    title = (f'{label or split.dataset}/{split.name} episode {i}, class {split.class_name(ep.class_id)}, '
             f'{config.data.shot}-shot, at {truth.shape[1]} x {truth.shape[0]}')
    image = visualize.episode_panel([originals(s, ep.class_id) for s in ep.supports], query, truth, preds, title,
                                    captions=captions)
    where = f'episode{i:03d}'
    if directory:
      where = os.path.join(directory, f'{prefix}_episode{i:03d}.png' if prefix else f'episode{i:03d}.png')
      image.save(where, format='PNG')
    out.append((where, image))
  return out


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
                   source: datasets.SplitData, target: datasets.SplitData | None,
                   report: dict | None = None) -> str | None:
  """Writes the memory PCA picture (visualize.memory_pca_png) for a model with a style memory.

  variables: host (unreplicated) variables; report: an evaluation's report, whose per-item
  counts of target images (results[mode]['memory_item_target']) label the items. Returns
  the path, or None when the model keeps no style memory.
  """
  bank = style_memory_bank(variables)
  if bank is None:
    return None
  size = config.data.image_size
  src = image_style_stats(model, variables, source, size)
  tgt = image_style_stats(model, variables, target, size) if target is not None else None
  chosen = next((r[k] for r in (report or {}).get('results', {}).values() for k in r
                 if k.startswith('memory_item_') and len(r[k]) == len(bank['means'])), None)
  visualize.memory_pca_png(path, bank['means'], src, tgt,
                           title=f'{len(bank["means"])} items, {config.data.train_split} vs '
                                 f'{config.data.test_split}', chosen=None if chosen is None else np.asarray(chosen))
  return path


def format_report(report: dict) -> str:
  """A plain-text table: one row per memory mode, one column per class."""
  modes = list(report['results'])
  classes = sorted({c for m in modes for c in report['results'][m]['per_class']}, key=int)
  names = [report.get('class_names', {}).get(c, f'c{c}') for c in classes]
  widths = [max(6, len(n)) for n in names]
  width = max(11, *(len(m) for m in modes))
  head = f"{'mode':<{width}} {'mIoU':>6} {'FB-IoU':>7} " + ' '.join(f'{n:>{w}}' for n, w in zip(names, widths))
  kshot = ', HSNet vote' if report.get('kshot') == 'vote' and report['shot'] > 1 else ''
  distinct = (f" ({report['distinct_episodes']} distinct: the target is small, draws repeat)"
              if report.get('distinct_episodes') else '')
  lines = [f"{report['split']}, {report['shot']}-shot{kshot}, {report['num_episodes']} episodes{distinct}"]
  if report.get('adapt'):
    a = report['adapt']
    lines.append(f"+adapt rows: {a['steps']} {a['optimizer']} steps (lr {a['lr']:g}) per episode on its own "
                 f"supports, loss {a['loss']}{' + query entropy' if a['use_query'] else ''}, groups "
                 f"{', '.join(a['groups'])}")
  if report.get('classes_note'):
    lines.append(report['classes_note'])
  lines.append(head)
  for m in modes:
    r = report['results'][m]
    cells = ' '.join(f"{r['per_class'].get(c, float('nan')):{w}.1f}" for c, w in zip(classes, widths))
    lines.append(f"{m:<{width}} {r['miou']:6.2f} {r['fb_iou']:7.2f} {cells}")
  for m in modes:
    for key, counts in report['results'][m].items():
      if key.startswith('memory_item_'):
        used = sum(1 for c in counts if c)
        lines.append(f'{m}: images per memory item ({key[len("memory_item_"):]}): {counts} '
                     f'({used} of {len(counts)} items used)')
  if report.get('episodes_per_s'):
    lines.append(f"time: {report['seconds']:.1f} s ({report['first_batch_s']:.1f} s for the first batch, which "
                 f"compiles); then {report['episodes_per_s']:.1f} episodes/s, data loading included; the device "
                 f"waited on the host {100 * report['host_wait_share']:.1f}% of that time")
  return '\n'.join(lines)


def evaluation_name(report: dict, kind: str) -> str:
  """A name holding everything that tells two evaluations of one run apart: checkpoint kind,
  step, dataset (when not the embedded one), split, shot count, protocol, HSNet's vote (k > 1)
  and test-time adaptation (its step count) when used; its report folder's name."""
  dataset = report.get('dataset', 'mmtjax_shapes')
  where = report['split'] if dataset == 'mmtjax_shapes' else f"{dataset}-{report['split']}"
  vote = '_vote' if report.get('kshot') == 'vote' and report['shot'] > 1 else ''
  adapted = f"_adapt{report['adapt']['steps']}" if report.get('adapt') else ''
  return f"{kind}_step{report['step']}_{where}_{report['shot']}shot_{report['protocol']}{vote}{adapted}"


def report_name(report: dict, kind: str, ext: str = 'json') -> str:
  """evaluation_name as a file name (eval_<name>.<ext>), for --output paths of one's own."""
  return f'eval_{evaluation_name(report, kind)}.{ext}'


REPORTS = 'reports'  # <workdir>/reports/<one folder per evaluation>/


@dataclasses.dataclass(frozen=True)
class ReportFiles:
  """Where one evaluation's files go: a folder of its own, <workdir>/reports/<name>/ holding
  report.json, report.md and the pictures; or, with --output, the JSON at that path and the
  others beside it (<stem>.md, <stem>_<picture>.png)."""
  json: str
  folder: str | None = None

  def path(self, name: str) -> str:
    """Where the file `name` (report.md, classes_ph2_1shot.png, episodes, ...) goes."""
    if self.folder:
      return os.path.join(self.folder, name)
    stem = os.path.splitext(self.json)[0]
    return stem + '.md' if name == 'report.md' else f'{stem}_{name}'


def report_files(output: str | None, directory: str, name: str) -> ReportFiles:
  """The files of one evaluation: --output's path, else a new folder <directory>/reports/<name>
  (<name>.1, .2, ... when it exists: nothing is ever replaced), created here."""
  if output:
    return ReportFiles(unused_path(output))
  folder = unused_path(os.path.join(directory, REPORTS, name))
  os.makedirs(folder)
  return ReportFiles(os.path.join(folder, 'report.json'), folder)


def written_files(report: dict) -> list[str]:
  """Every file an evaluation wrote (publish), in the order written."""
  return [report[k] for k in ('report_path', 'markdown_path') if report.get(k)] + list(report.get('pictures', []))


def unused_path(path: str) -> str:
  """`path`, or `stem.1.ext`, `stem.2.ext`, ... when it exists: a report is never replaced."""
  stem, ext = os.path.splitext(path)
  n = 1
  while os.path.exists(path):
    path, n = f'{stem}.{n}{ext}', n + 1
  return path


def _writable(directory: str) -> bool:
  """Whether a file can be created in `directory` (a probe file, removed: os.access says yes
  to root on a read-only mount's permissions and cannot see every read-only case)."""
  try:
    with tempfile.NamedTemporaryFile(dir=directory, prefix='.mmtjax_write_probe'):
      return True
  except OSError:
    return False


def check_destination(output: str | None, directory: str) -> None:
  """One line, before any work, when the reports could not be written: --output names a
  folder, a file in a folder that does not exist or is read-only, or (without --output) the
  directory the reports go to is read-only."""
  if output:
    if os.path.isdir(output):
      raise UserError(f'--output {output} is a directory; give a file name (e.g. {output}/report.json)')
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
      raise UserError(f'--output {output}: directory {parent} does not exist; create it or give a path in an '
                      f'existing folder')
    if not _writable(parent):
      raise UserError(f'--output {output}: directory {parent} is not writable; give a path in a writable folder')
  elif os.path.isdir(directory) and not _writable(directory):
    raise UserError(f'cannot write the reports into {directory} (not writable): give --output PATH in a '
                    f'writable folder')


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
  evaluates it on the config's test episodes: `sweep` with one dataset, shot count and seed."""
  return sweep(config, workdir, step=step, output=output, best=best)


def _target_config(config: ml_collections.ConfigDict, name: str, manual_dir: str | None
                   ) -> ml_collections.ConfigDict:
  """A copy of the config testing on dataset `name` (its own split and protocol unless it is
  the config's test dataset already), read from `manual_dir` when given."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    d = cfg.data
    if name != datasets.test_data(d).dataset:
      d.test_dataset, d.test_split, d.protocol = name, None, None
    if manual_dir:
      d.test_dataset, d.test_manual_dir = name, manual_dir
    datasets.resolve(cfg, training=False)
  return cfg


def _target_kinds(entries: Sequence[str]) -> dict[str, str]:
  """Test dataset entries -> {label: dataset}: 'deepglobe', or 'LABEL=DATASET' to test several
  datasets of one kind (your folders: horse=folder,ph2=folder, each with --manual_dir LABEL=PATH)."""
  out = {}
  for entry in entries:
    label, sep, kind = entry.partition('=')
    label, kind = (label.strip(), kind.strip()) if sep else (entry.strip(), entry.strip())
    if kind not in datasets.DATASETS:
      raise UserError(f'unknown dataset {kind!r}; available: {list(datasets.DATASETS)} (a labelled one: '
                      f'LABEL=DATASET, e.g. horse=folder)')
    if not label or label in out:
      raise UserError(f'test dataset {label!r} is named twice; label each one: e.g. horse=folder,ph2=folder')
    out[label] = kind
  return out


def _not_ready(cfg: ml_collections.ConfigDict, label: str | None = None) -> str | None:
  """Why the test dataset of `cfg` cannot run now (not built and no raw files given), or None."""
  data = datasets.test_data(cfg.data)
  if data.get('manual_dir') or datasets.is_prepared(data):
    return None
  return (f'{data.dataset} is not built in {data.get("data_dir") or "the default TFDS data dir"}; build it '
          f'once with --manual_dir {label or data.dataset}=PATH (its raw files; README: Datasets)')


def _restore(workdir: str, config, best: bool, step: int | None):
  """(step, model, host variables) of a workdir's checkpoint; a training-free method's come from
  its config and model.pretrained alone (step 0; the workdir only receives the reports)."""
  if not methods.for_config(config).trainable:
    model = get_model(config, axis_name=parallel.AXIS)
    return 0, model, untrained_variables(model, config, note=progress.line)
  subdir = checkpointing.BEST_SUBDIR if best else checkpointing.SUBDIR
  ckpt_dir = os.path.join(workdir, subdir)
  if not os.path.isdir(ckpt_dir):
    raise checkpointing.CheckpointError(f'no checkpoints in {workdir} (expected {ckpt_dir})')
  model = get_model(config, axis_name=parallel.AXIS)
  template, _ = create_train_state(model, config)
  step, state = _restore_for_eval(workdir, subdir, step, config, jax.device_get(template))
  return step, model, parallel.eval_variables(state)


def run_config(workdir: str, *, best: bool = False, step: int | None = None) -> ml_collections.ConfigDict:
  """The config a run was trained with, as its checkpoint (latest, `step`, or the best) stored it:
  what `python evaluate.py --workdir W` evaluates when no --config is given."""
  subdir = checkpointing.BEST_SUBDIR if best else checkpointing.SUBDIR
  where = os.path.join(workdir, subdir)
  if not os.path.isdir(where):
    raise checkpointing.CheckpointError(f'no checkpoints in {workdir} (expected {where}); a training-free '
                                        f'method (model=prototype) needs --config')
  ckpts = checkpointing.Checkpoints(workdir, create=False, subdir=subdir)
  try:
    return ml_collections.ConfigDict(ckpts.saved_config(ckpts.chosen_step(step)))
  finally:
    ckpts.close()


def data_differences(config: ml_collections.ConfigDict, saved: dict) -> list[str]:
  """'data.FIELD: RUN -> GIVEN' for each data field (the run's own dataset: its files, options,
  classes, size) where a given config differs from the one the run was trained with."""
  def flat(d, prefix='data'):
    out = {}
    for k, v in (d or {}).items():
      out.update(flat(v, f'{prefix}.{k}') if isinstance(v, dict) else {f'{prefix}.{k}': v})
    return out
  mine, theirs = flat(checkpointing.config_to_dict(config).get('data')), flat(saved.get('data'))
  skip = {'data.shot', 'data.num_workers', 'data.data_dir', 'data.test_dataset', 'data.test_manual_dir',
          'data.test_split', 'data.protocol', 'data.test_semantic', 'data.fold_list'}
  return [f'{k}: {theirs.get(k)!r} in the run, {mine.get(k)!r} here' for k in sorted(set(mine) | set(theirs))
          if k not in skip and not any(k.startswith(s + '.') for s in skip) and mine.get(k) != theirs.get(k)]


def _parse_seeds(seeds, protocol_seed: int) -> list[int]:
  return list(seeds) if seeds else [protocol_seed]


def sweep(config: ml_collections.ConfigDict, workdir: str, *, test_datasets: list[str] | None = None,
          shots: list[int] | None = None, seeds: list[int] | None = None,
          manual_dirs: dict[str, str] | None = None, step: int | None = None, best: bool = False,
          output: str | None = None, save_predictions: int = 0, label: str | None = None) -> dict:
  """Evaluates a checkpoint on several test datasets, shot counts and seeds.

  Each dataset is tested with its own split and published protocol (unless
  it is the config's test dataset: then the config's fields hold). Seeds
  replace the protocol's episode seed (the anchors' lists: HSNet's
  fix_randseed(seed)); when `workdir` holds '{seed}', they select one
  training run per seed instead (each tested on the protocol's own
  episodes). Every eval mode of the method (MMT: memory transfer on and off)
  is a row. Datasets not built and without raw files are skipped, each
  named in `skipped` with how to build it; the others run.

  Writes to the workdir (never replacing a file): the JSON report, a
  Markdown table of the same numbers (reports.markdown), per-class IoU bars
  per dataset and shot, the memory picture (MMT), and with
  `save_predictions` N, N episode panels per dataset, shot and eval mode.
  Returns the report: with one dataset, shot and seed, the run's report;
  otherwise {'runs': [...], 'summary': [...], 'skipped': [...], ...}.
  """
  datasets.resolve(config, training=False)
  config_lib.validate(config)
  manual_dirs = dict(manual_dirs or {})
  kinds = _target_kinds(test_datasets or [datasets.test_data(config.data).dataset])
  names = list(kinds)
  stray = sorted(set(manual_dirs) - set(names))
  if stray:
    raise UserError(f'--manual_dir names {stray}, which this evaluation does not test ({names})')
  shots = list(shots or [config.data.shot])
  if min(shots) < 1:
    raise UserError(f'shot counts must be >= 1, got {shots}')
  per_run = '{seed}' in workdir
  if per_run and not seeds:
    raise UserError(f'--workdir {workdir} holds {{seed}}: give the training seeds with --seeds, e.g. 0,1,2')
  if seeds and min(seeds) < 0:
    raise UserError(f'seeds must be >= 0 (they seed numpy generators), got {",".join(map(str, seeds))}')
  if jax.process_index() == 0:  # Before any work: where the reports will go must take them.
    check_destination(output, os.path.commonpath([os.path.abspath(workdir.format(seed=s)) for s in seeds])
                      if per_run else workdir)
  targets, skipped = {}, []
  for name in names:
    cfg = _target_config(config, kinds[name], manual_dirs.get(name))
    why = _not_ready(cfg, name)
    if why:
      skipped.append({'dataset': name, 'reason': why})
    else:
      targets[name] = cfg
  restored = {}

  def checkpoint(seed):  # (step, model, host variables, replicated variables) of the seed's run.
    where = workdir.format(seed=seed) if per_run else workdir
    if where not in restored:
      s, model, host = _restore(where, config, best, step)
      restored[where] = (s, model, host, parallel.replicate(host))
    return where, restored[where]

  runs, cache, splits = [], {}, {}
  total_runs = len(targets) * len(shots) * len(seeds or [None])
  trained = methods.for_config(config).trainable
  kind = ('best' if best else 'latest') if trained else 'pretrained'
  if not trained and jax.process_index() == 0:
    os.makedirs(workdir.format(seed=seeds[0]) if per_run else workdir, exist_ok=True)  # its reports only
  first_where, (first_step, *_) = checkpoint(seeds[0] if per_run else None)
  for name, cfg in targets.items():
    try:
      split = datasets.load_split(datasets.test_data(cfg.data), cfg.data.test_split, training=False)
    except UserError as e:
      if len(names) == 1:
        raise
      skipped.append({'dataset': name, 'reason': str(e)})
      total_runs -= len(shots) * len(seeds or [None])  # progress counts the runs that run
      continue
    splits[name] = split
    for shot in shots:
      with cfg.unlocked():
        cfg.data.shot = shot
      protocol = protocols.test_protocol(datasets.test_data(cfg.data), cfg.eval)
      for seed in _parse_seeds(seeds, protocol.seed):
        where, (s, model, host, replicated) = checkpoint(seed)
        chosen = protocol if per_run else dataclasses.replace(protocol, seed=seed)
        logging.info('evaluating %s step %d on %s/%s, %d-shot, seed %d', where, s, name,
                     cfg.data.test_split, shot, seed)
        try:
          run = evaluate_variables(model, replicated, cfg, split, protocol=chosen, step_cache=cache)
        except episode_lists.ShotCountError as e:
          if total_runs == 1:
            raise
          warn(f'{name}: left out of the {shot}-shot cell: {e}')
          skipped.append({'dataset': name, 'shot': shot, 'reason': str(e)})
          total_runs -= len(_parse_seeds(seeds, protocol.seed))
          break
        run.update(step=s, checkpoint=os.path.join(where, checkpointing.BEST_SUBDIR if best
                                                    else checkpointing.SUBDIR) if trained else
                   f'training-free: {config.model.pretrained}', episode_seed=chosen.seed, seed=seed)
        if name != kinds[name]:  # a labelled target (several folders of one kind): the label names it
          run.update(dataset=name, dataset_kind=kinds[name])
        runs.append(run)
        if total_runs > 1:
          # Whole runs, compiling included: a later run compiles again for a new shot count or
          # dataset, and a first batch the compile cache made ordinary is ordinary time.
          first = next(iter(run['results']))
          progress.line(f"[{len(runs)}/{total_runs}] {name} {shot}-shot seed {seed}: {first} mIoU "
                        f"{run['results'][first]['miou']:.2f} ({progress.duration(run['seconds'])}); ETA "
                        f"{progress.duration(np.mean([r['seconds'] for r in runs]) * (total_runs - len(runs)))} "
                        f"(the runs so far, on average)")
  if not runs:
    raise UserError('nothing was evaluated: ' + '; '.join(f"{x['dataset']}: {x['reason']}" for x in skipped))
  single = len(runs) == 1 and not skipped
  method = config.model.name
  if single:
    report = runs[0]
    report['checkpoint'] = os.path.basename(report['checkpoint'])
    report['config'] = checkpointing.config_to_dict(targets[report['dataset']])
  else:
    summary = reports.summarize(runs)
    report = {'kind': 'sweep', 'method': method, 'checkpoint': kind, 'workdir': workdir, 'step': first_step,
              'datasets': names, 'shots': shots, 'seeds': sorted({r['seed'] for r in runs}),
              'seeds_vary': 'training runs' if per_run else 'test episodes',
              'kshot': config.eval.get('kshot', 'model'),
              'std': f'sample standard deviation over seeds (numpy std, ddof={reports.STD_DDOF})',
              'summary': summary, 'skipped': skipped, 'runs': runs, 'config': checkpointing.config_to_dict(config)}
  if jax.process_index() != 0:
    return report
  # One run: its workdir; training runs per seed: the folder holding them all.
  directory = os.path.commonpath([os.path.abspath(w) for w in restored]) if per_run else first_where
  if single:
    name = evaluation_name(report, kind)
  else:
    seeds_part = '+'.join(str(x) for x in report['seeds'])
    name = (f"{kind}_step{first_step}_{label or '+'.join(names)}_{'+'.join(str(k) for k in shots)}shot_"
            f"seeds{seeds_part}")
  caption = (f"{reports.METHOD_NAMES.get(method, method)}, {kind} checkpoint, step {first_step}; "
             f"seeds {sorted({r['seed'] for r in runs})} ({'training runs' if per_run else 'test episodes'}); "
             f"k-shot: {config.eval.get('kshot', 'model')}; protocols: "
             + ', '.join(f"{n} {r['protocol']}" for n, r in {r['dataset']: r for r in runs}.items())
             + ''.join(f"; not evaluated: {x['dataset']} ({x['reason']})" for x in skipped) + '.')
  _, (_, model, host, _) = checkpoint(seeds[0] if per_run else None)
  return publish(report, runs, report_files(output, directory, name), config=config, targets=targets,
                 splits=splits, model=model, host=host, caption=caption, save_predictions=save_predictions,
                 cache=cache)


def publish(report: dict, runs: Sequence[dict], files: ReportFiles, *, config, targets: dict, splits: dict,
            model, host, caption: str, save_predictions: int = 0, cache: dict | None = None,
            source: datasets.SplitData | None = None) -> dict:
  """Writes an evaluation's files, the same for evaluate.py and train.py's final test (never
  replacing a file), where `files` says (report_files): the JSON report, a Markdown table of its
  numbers, per-class IoU bars per dataset and shot, the memory picture (MMT) and
  `save_predictions` episode panels per dataset and shot (every eval mode side by side).
  `targets`/`splits`: dataset name -> its config / test split; `model`, `host`: the network and
  host variables the pictures use. Returns the report with the paths written (written_files)."""
  method = config.model.name
  single = len(runs) == 1 and report is runs[0]
  report['report_path'] = write_report(report, files.json)
  if files.folder:
    report['folder'] = files.folder
  report['markdown_path'] = write_text(files.path('report.md'),
                                       reports.markdown(reports.summarize(runs), method, caption, runs))
  panels, pictures = unused_path(files.path('episodes')), []
  cache = {} if cache is None else cache
  for name, cfg in targets.items():
    done = [r for r in runs if r['dataset'] == name]
    if not done:
      continue
    split = splits[name]
    for shot in sorted({r['shot'] for r in done}):
      pictures.append(class_bars(files, split, [r for r in done if r['shot'] == shot], method))
      if save_predictions > 0:
        cfg = copy.deepcopy(cfg)
        with cfg.unlocked():
          cfg.data.shot = shot
        protocol = protocols.test_protocol(datasets.test_data(cfg.data), cfg.eval)
        protocol = dataclasses.replace(protocol, seed=done[0]['episode_seed'])
        pictures += [p for p, _ in prediction_panels(model, host, cfg, split, protocol, save_predictions,
                                                       panels, f'{name}_{shot}shot', cache, label=name)]
    if source is None and style_memory_bank(host) is None:
      continue  # No memory, no memory picture: the training split is not needed.
    if source is None:  # The training split, for the memory picture: loaded once.
      source = datasets.load_split(config.data, config.data.train_split, training=False)
    picture = memory_picture(model, host, cfg, unused_path(files.path('memory.png' if single else
                                                                      f'memory_{name}.png')), source, split, done[0])
    if picture:
      report['memory_picture'] = picture
      pictures.append(picture)
  report['pictures'] = [p for p in pictures if p]
  return report


def class_bars(files: ReportFiles, split: datasets.SplitData, runs: Sequence[dict], method: str) -> str | None:
  """Per-class IoU bars of every eval mode, averaged over the runs' seeds; returns the path."""
  if not runs:
    return None
  modes = list(runs[0]['results'])
  classes = sorted({c for r in runs for m in modes for c in r['results'][m]['per_class']}, key=int)
  series = {m: [float(np.mean([r['results'][m]['per_class'][c] for r in runs if c in r['results'][m]['per_class']]
                              or [0.0])) for c in classes] for m in modes}
  run = runs[0]
  path = unused_path(files.path(f"classes_{run['dataset']}_{run['shot']}shot.png"))
  visualize.class_iou_png(path, [split.class_name(int(c)) for c in classes], series,
                          f"{reports.METHOD_NAMES.get(method, method)}, {run['dataset']}/{run['split']}, "
                          f"{run['shot']}-shot, {len(runs)} seed(s): per-class IoU; lines: mIoU",
                          means={m: float(np.mean([r['results'][m]['miou'] for r in runs])) for m in modes})
  return path


def write_text(path: str, text: str) -> str:
  """Writes a text file atomically (never replacing one); returns where it wrote."""
  path = unused_path(path)
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)
  return path
