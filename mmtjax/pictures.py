"""Evaluation pictures: one panel per episode (every eval mode side by side), the class bars,
and the style memory's picture."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mmtjax import (
  methods,
  metrics,
  parallel,
  reports,
  visualize,
)
from mmtjax.data import datasets, pipeline, protocols, transforms
from mmtjax.data import episodes as episode_lists
from mmtjax.evaluation import episode_loader
from mmtjax.report_files import ReportFiles, unused_path

PANEL_MAX_SIDE = 480  # episode panels show images at their own resolution, the longer side capped here


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
  loader = episode_loader(split, protocol, config)
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
