"""Command-line plumbing shared by train.py and evaluate.py: one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from absl import flags
from absl import logging as absl_logging

from mmtjax.checkpointing import CheckpointError
from mmtjax.weights.torch_pth import WeightsError

T = TypeVar('T')
# Errors a user can cause (bad config, paths, checkpoints, data): reported in
# one line, without a traceback.
USER_ERRORS = (ValueError, WeightsError, CheckpointError, PermissionError, FileNotFoundError, FloatingPointError)


def _fail(message: str) -> None:
  # Always one line: nested errors (absl wraps config-file errors) are joined.
  line = ' '.join(part.strip() for part in message.splitlines() if part.strip())
  print(f'error: {line}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a one-line error (bad config file, arg or override).

  Library INFO logs (orbax writes several lines per checkpoint) are hidden
  unless --verbosity is given: the console shows the progress lines and
  warnings.
  """
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError) as e:
    _fail(str(e) or type(e).__name__)
  if not flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  return rest


def run(fn: Callable[[], T]) -> T:
  try:
    return fn()
  except USER_ERRORS as e:
    _fail(str(e))
