"""Evaluating a workdir (or a training-free method): its checkpoint restored, one dataset or a
sweep over datasets, shot counts and seeds, reports written."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mmtjax import (
  checkpointing,
  config_lib,
  methods,
  parallel,
  progress,
  reports,
)
from mmtjax.data import datasets
from mmtjax.data import episodes as episode_lists
from mmtjax.errors import UserError, warn
from mmtjax.evaluation import evaluate_variables
from mmtjax.models import get_model
from mmtjax.pictures import class_bars, memory_picture, prediction_panels, style_memory_bank
from mmtjax.report_files import (
  ReportFiles,
  check_destination,
  evaluation_name,
  report_files,
  unused_path,
  write_report,
  write_text,
)
from mmtjax.state import create_train_state, untrained_variables


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
    if kind not in datasets.names():
      raise UserError(f'unknown dataset {kind!r}; available: {list(datasets.names())} (a labelled one: '
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
      protocol = datasets.test_protocol(datasets.test_data(cfg.data), cfg.eval)
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
        protocol = datasets.test_protocol(datasets.test_data(cfg.data), cfg.eval)
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
