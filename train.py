r"""Trains a few-shot segmenter, resuming from the latest checkpoint in --workdir.

  python train.py --config configs/default.py --workdir /tmp/mmt
  python train.py --config configs/default.py:shot=5 --workdir /tmp/mmt5 \
      --config.train.num_steps=1000

SIGTERM (preemption) saves a checkpoint at the current step and exits with
status 0; rerunning the same command continues exactly from there. Multi-host:
set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (or launch
with srun / mpirun) and run the same command on every host.
"""

from absl import app, flags
from ml_collections import config_flags

from mmtjax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:args].', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
_STOP_AFTER = flags.DEFINE_integer(
    'stop_after_steps', None, 'Train at most this many steps in this run, save and exit '
    '(the next run resumes there).')
_PRINT_CONFIG = flags.DEFINE_bool('print_config', False, 'Print the resolved config and exit (no training; '
                                   '--workdir not needed).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _PRINT_CONFIG.value:
    cli.run(lambda: cli.print_config(_CONFIG.value, training=True))
    return
  if not _WORKDIR.value:
    cli.fail('--workdir is required (where checkpoints and metrics go)')
  from mmtjax import distributed, train_lib, training_log  # Here: --help and flag errors answer without JAX.
  cli.compile_cache()
  training_log.raise_on_sigterm()  # SIGTERM outside the training loop: one line, exit 0.
  cli.run(distributed.maybe_initialize, _WORKDIR.value)
  cli.run(lambda: train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                     stop_after_steps=_STOP_AFTER.value), _WORKDIR.value)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
