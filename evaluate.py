r"""Evaluates a checkpoint on the config's fixed, seeded test episodes.

  python evaluate.py --config configs/default.py --workdir /tmp/mmt
  python evaluate.py --config configs/default.py --workdir /tmp/mmt --step 400
  python evaluate.py --config configs/default.py --workdir /tmp/mmt --best

Prints mIoU, FB-IoU and per-class IoU with the memory transfer on and off,
and writes the same table as JSON (--output, default
<workdir>/eval_<latest|best>_step<N>_<split>_<K>shot_<protocol>.json; an
existing report is never replaced: a .1, .2, ... suffix is added).
"""

from absl import app, flags
from ml_collections import config_flags

from mmtjax import cli, distributed
from mmtjax.eval_lib import evaluate, format_report

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:args].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training directory holding checkpoints/.')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: latest).')
_BEST = flags.DEFINE_bool('best', False, 'Evaluate the best-by-validation checkpoint '
                          '(<workdir>/checkpoints_best) instead of the latest.')
_OUTPUT = flags.DEFINE_string('output', None, 'Where to write the JSON report.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  cli.run(distributed.maybe_initialize, _WORKDIR.value)
  report = cli.run(lambda: evaluate(_CONFIG.value, _WORKDIR.value, step=_STEP.value,
                                    output=_OUTPUT.value, best=_BEST.value), _WORKDIR.value)
  print(format_report(report))
  for key, what in (('report_path', 'report'), ('memory_picture', 'memory picture')):
    if report.get(key):
      print(f'{what}: {report[key]}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
