"""Sweep summaries: mean ± std over seeds, a terminal table and a Markdown table laid out as the papers.

A sweep evaluates one method on several datasets, shot counts and seeds
(sweeps.sweep). Its runs are per-(dataset, shot, seed) reports; here they
become one row per (eval mode, shot count) and dataset, with the mean and
the standard deviation over seeds, and tables whose rows are the method and
its setting and whose columns are the datasets and their mean, each split
by shot count (as PATNet's Table 1, for instance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Standard deviation over seeds: the sample one (numpy std with ddof=1); None for one seed.
STD_DDOF = 1
METHOD_NAMES = {'mmt': 'MMT', 'mmnet': 'MM-Net', 'baseline': 'Baseline'}


def _dataset_name(name: str) -> str:
  """A dataset's display name, as the dataset declares it (a label of one's own stays as given)."""
  from mmtjax.data import datasets  # the registry imports tfds; formatting alone does not need it
  return datasets.display_name(name)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
  """(mean, sample standard deviation) of per-seed numbers; std None for a single seed."""
  x = np.asarray(values, np.float64)
  return float(np.mean(x)), (float(np.std(x, ddof=STD_DDOF)) if x.size > 1 else None)


def summarize(runs: Sequence[dict]) -> list[dict]:
  """One entry per (dataset, shot, eval mode): per-seed mIoU and FB-IoU, their mean and std.

  With several datasets, a 'mean' entry per (shot, mode) averages the
  datasets for each seed first, then takes mean and std over seeds.
  """
  cells: dict[tuple, dict] = {}
  for run in runs:
    for mode, r in run['results'].items():
      cell = cells.setdefault((run['dataset'], run['shot'], mode), {
          'dataset': run['dataset'], 'shot': run['shot'], 'mode': mode, 'kshot': run.get('kshot', 'model'),
          'protocol': run['protocol'], 'seeds': [], 'miou': [], 'fb_iou': []})
      cell['seeds'].append(run['seed'])
      cell['miou'].append(r['miou'])
      cell['fb_iou'].append(r['fb_iou'])
  rows = list(cells.values())
  names = list(dict.fromkeys(r['dataset'] for r in rows))
  if len(names) > 1:
    for shot, mode in dict.fromkeys((r['shot'], r['mode']) for r in rows):
      group = [r for r in rows if r['shot'] == shot and r['mode'] == mode]
      seeds = sorted(set.intersection(*(set(r['seeds']) for r in group)))
      if len(group) == len(names) and seeds:
        per_seed = {k: [float(np.mean([r[k][r['seeds'].index(s)] for r in group])) for s in seeds]
                    for k in ('miou', 'fb_iou')}
        rows.append({'dataset': 'mean', 'shot': shot, 'mode': mode, 'kshot': group[0]['kshot'],
                     'protocol': None, 'seeds': seeds, **per_seed})
  for r in rows:
    for k in ('miou', 'fb_iou'):
      r[f'{k}_mean'], r[f'{k}_std'] = mean_std(r[k])
  return rows


def cell_text(mean: float, std: float | None) -> str:
  if math.isnan(mean):
    return '-'
  return f'{mean:.1f}' if std is None else f'{mean:.1f} ± {std:.1f}'


def _grid(summary: Sequence[dict], method: str, metric: str) -> tuple[list[str], list[list[str]]]:
  """(header, rows) of one metric: rows method (mode[, vote]), columns dataset x shot then the mean."""
  datasets = list(dict.fromkeys(r['dataset'] for r in summary if r['dataset'] != 'mean'))
  if any(r['dataset'] == 'mean' for r in summary):
    datasets.append('mean')
  shots = sorted({r['shot'] for r in summary})
  modes = list(dict.fromkeys(r['mode'] for r in summary))
  by_key = {(r['dataset'], r['shot'], r['mode']): r for r in summary}
  header = ['Method'] + [f'{_dataset_name(d) if d != "mean" else "Mean"} {k}-shot'
                         for d in datasets for k in shots]
  rows = []
  for mode in modes:
    kshot = next(r['kshot'] for r in summary if r['mode'] == mode)
    label = f'{METHOD_NAMES.get(method, method)} ({mode}{", vote" if kshot == "vote" else ""})'
    cells = []
    for d in datasets:
      for k in shots:
        r = by_key.get((d, k, mode))
        cells.append(cell_text(r[f'{metric}_mean'], r[f'{metric}_std']) if r else '')
    rows.append([label, *cells])
  return header, rows


def terminal_table(summary: Sequence[dict], method: str) -> str:
  """mIoU and FB-IoU tables, columns aligned, for the console."""
  out = []
  for metric, title in (('miou', 'mIoU'), ('fb_iou', 'FB-IoU')):
    header, rows = _grid(summary, method, metric)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    out.append(title)
    for row in [header, *rows]:
      out.append('  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                           enumerate(zip(row, widths))))
    out.append('')
  return '\n'.join(out).rstrip()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  return ['| ' + ' | '.join(header) + ' |', '|' + '|'.join([':---'] + ['---:'] * (len(header) - 1)) + '|',
          *('| ' + ' | '.join(row) + ' |' for row in rows)]


def per_class(runs: Sequence[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
  """(title, header, rows) per (dataset, shot): one row per eval mode, one column per class
  (named), IoU mean ± std over the runs' seeds."""
  out = []
  for dataset, shot in dict.fromkeys((r['dataset'], r['shot']) for r in runs):
    group = [r for r in runs if r['dataset'] == dataset and r['shot'] == shot]
    names = {c: n for r in group for c, n in r.get('class_names', {}).items()}
    modes = list(dict.fromkeys(m for r in group for m in r['results']))
    classes = sorted({c for r in group for m in modes for c in r['results'][m]['per_class']}, key=int)
    rows = []
    for mode in modes:
      cells = [cell_text(*mean_std([r['results'][mode]['per_class'][c] for r in group
                                    if c in r['results'][mode]['per_class']])) for c in classes]
      rows.append([mode, *cells])
    title = f'{_dataset_name(dataset)} {shot}-shot: per-class IoU (%), {len(group)} seed(s)'
    out.append((title, ['mode', *(names.get(c, f'class {c}') for c in classes)], rows))
  return out


def markdown(summary: Sequence[dict], method: str, caption: str, runs: Sequence[dict] = ()) -> str:
  """The papers' table layout in Markdown: one table for mIoU, one for FB-IoU; then, given the
  runs, per-class IoU by class name for each dataset and shot."""
  out = [caption, '']
  for metric, title in (('miou', 'mIoU (%)'), ('fb_iou', 'FB-IoU (%)')):
    header, rows = _grid(summary, method, metric)
    out += [f'**{title}**', '', *_table(header, rows), '']
  for title, header, rows in per_class(runs):
    out += [f'**{title}**', '', *_table(header, rows), '']
  return '\n'.join(out)
