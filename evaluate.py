r"""Evaluates a checkpoint on fixed, seeded test episodes: one dataset, or a sweep.

  python evaluate.py --workdir /tmp/mmt     # the run's own config, as its checkpoint stored it
  python evaluate.py --config configs/default.py --workdir /tmp/mmt
  python evaluate.py --config configs/default.py --workdir /tmp/mmt --step 400 --save_predictions 8
  python evaluate.py --config configs/default.py --workdir /tmp/mmt --best --shots 1,5 --seeds 0,1,2
  python evaluate.py --config configs/patnet.py --workdir W --suite patnet --shots 1,5 \
      --manual_dir deepglobe=~/data/Deepglobe --manual_dir isic2018=~/data/ISIC
  python evaluate.py --config configs/default.py --workdir 'runs/mmt_seed{seed}' --seeds 0,1,2
  python evaluate.py --config configs/default.py --workdir /tmp/mmt --datasets horse=folder,ph2=folder \
      --manual_dir horse=~/data/horse --manual_dir ph2=~/data/PH2

Without --config, a run is evaluated with the config it was trained with
(its data, class list, options and image size included); with --config,
that config is used, and data fields that differ from the run's are named
in one warning line. A training-free method (model=prototype) needs --config.

--datasets / --suite (patnet: Deepglobe, ISIC2018, Chest X-ray, FSS-1000)
test on each dataset with its published protocol; --seeds set the test
episodes' seed, or with '{seed}' in --workdir pick one training run per seed.
A dataset that is not built and has no --manual_dir is skipped and named.
Every eval mode is a row (MMT: memory transfer on and off), with mean ± std
over seeds. k-shot: the model's own path, or HSNet's vote with
--config.eval.kshot=vote.

Prints the tables and writes one folder per evaluation,
<workdir>/reports/<checkpoint>_step<N>_<dataset>-<split>_<K>shot_<protocol>/
(an existing folder is never replaced: a .1, .2, ... suffix is added), and
names every file it wrote: report.json (every number and the config),
report.md (the same table in Markdown), classes_<dataset>_<K>shot.png
(per-class IoU bars), memory.png (MMT) and, with --save_predictions N,
episodes/<dataset>_<K>shot_episode<i>.png (N episodes per dataset and shot,
every eval mode side by side). --output PATH writes the JSON there instead,
the other files beside it.
"""

from absl import app, flags
from ml_collections import config_flags

from mmtjax import cli, reports
from mmtjax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:args].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, "Training directory holding checkpoints/ ('{seed}' in it: one "
                               'run per --seeds value).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_BEST = flags.DEFINE_bool('best', False, 'Evaluate the best-by-validation checkpoint '
                          '(<workdir>/checkpoints_best) instead of the latest.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the JSON report.')
_DATASETS = flags.DEFINE_list('datasets', None, 'Test datasets, e.g. deepglobe,isic2018 (default: the '
                              "config's test dataset); LABEL=DATASET tests several of one kind, e.g. "
                              'horse=folder,ph2=folder, each with --manual_dir LABEL=PATH.')
_SUITE = flags.DEFINE_string('suite', None, 'A named set of test datasets, as the datasets declare it: patnet = '
                             'deepglobe, isic2018, chest_xray, fss1000.')
_SHOTS = flags.DEFINE_list('shots', None, "Shot counts, e.g. 1,5 (default: the config's data.shot).")
_SEEDS = flags.DEFINE_list('seeds', None, "Seeds, e.g. 0,1,2 (default: the protocol's own); mean ± std over them.")
_MANUAL_DIR = flags.DEFINE_multi_string('manual_dir', [], 'NAME=PATH: the raw files of a test dataset not '
                                        'built yet, NAME a dataset or a --datasets label (repeatable).')
_SAVE_PREDICTIONS = flags.DEFINE_integer('save_predictions', 0, 'Write PNG panels of the first N test '
                                         'episodes per dataset, shot and eval mode.')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False, 'Print the resolved config this evaluation would use '
                                   '(--config, or the run\'s own) and exit.')
flags.mark_flags_as_required(['workdir'])


def _integers(values, flag: str) -> list[int] | None:
  if not values:
    return None
  try:
    return [int(v) for v in values]
  except ValueError:
    raise UserError(f'--{flag} takes comma-separated integers, e.g. 1,5; got {",".join(values)}') from None


def _manual_dirs(values) -> dict[str, str]:
  out = {}
  for v in values:
    name, sep, path = v.partition('=')
    if not sep or not name or not path:
      raise UserError(f'--manual_dir takes NAME=PATH (e.g. deepglobe=~/data/Deepglobe), got {v!r}')
    out[name] = path
  return out


def _config():
  """--config, or the run's own; a given config's data fields that differ from the run's are
  named in one warning line."""
  import os

  from mmtjax import checkpointing, sweeps
  from mmtjax.errors import warn
  seeds = _integers(_SEEDS.value, 'seeds')
  workdir = _WORKDIR.value.format(seed=seeds[0]) if '{seed}' in _WORKDIR.value and seeds else _WORKDIR.value
  if _CONFIG.value is None:
    if '{seed}' in _WORKDIR.value and not seeds:
      raise UserError(f'--workdir {_WORKDIR.value} holds {{seed}}: give the training seeds with --seeds, e.g. 0,1,2')
    return sweeps.run_config(workdir, best=_BEST.value, step=_STEP.value)
  config = _CONFIG.value
  if os.path.isdir(os.path.join(workdir, checkpointing.SUBDIR)):
    diffs = sweeps.data_differences(config, sweeps.run_config(workdir, step=_STEP.value).to_dict())
    if diffs:
      warn(f'--config differs from the data the run in {workdir} was trained with: {"; ".join(diffs)} '
           f'(python evaluate.py --workdir {_WORKDIR.value} alone uses the run\'s own config)')
  return config


def _run():
  from mmtjax.data import datasets  # Here, not at the top: --help and flag errors answer without JAX.
  from mmtjax.sweeps import sweep
  if _SUITE.value and _DATASETS.value:
    raise UserError('give --suite or --datasets, not both')
  suites = datasets.suites()
  if _SUITE.value and _SUITE.value not in suites:
    raise UserError(f'unknown --suite {_SUITE.value!r}; the datasets declare {sorted(suites)}')
  names = list(suites[_SUITE.value]) if _SUITE.value else _DATASETS.value
  if _SAVE_PREDICTIONS.value < 0:
    raise UserError('--save_predictions must be >= 0')
  return sweep(_config(), _WORKDIR.value, test_datasets=names, shots=_integers(_SHOTS.value, 'shots'),
               seeds=_integers(_SEEDS.value, 'seeds'), manual_dirs=_manual_dirs(_MANUAL_DIR.value),
               step=_STEP.value, best=_BEST.value, output=_OUTPUT.value,
               save_predictions=_SAVE_PREDICTIONS.value, label=_SUITE.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _PRINT_CONFIG.value:
    cli.run(lambda: cli.print_config(_config(), training=False))
    return
  from mmtjax import distributed
  from mmtjax.report_files import format_report, written_files
  cli.compile_cache()
  cli.run(distributed.maybe_initialize, _WORKDIR.value)
  report = cli.run(_run, _WORKDIR.value)
  if report.get('kind') == 'sweep':
    for s in report['skipped']:
      if 'shot' not in s:  # (a left-out shot cell was a warning line when it happened)
        print(f"skipped {s['dataset']}: {s['reason']}")
    print(reports.terminal_table(report['summary'], report['method']))
  else:
    print(format_report(report))
  for path in written_files(report):
    print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
