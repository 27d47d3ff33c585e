"""The error a user can fix: one line on the command line, never a traceback.

Every check of user input (config fields, paths, datasets, checkpoints,
weight files) raises `UserError` or a subclass. Anything else that escapes is
a bug in mmtjax: the command line says so and keeps its traceback (cli.py).
`UserError` subclasses ValueError, so callers that catch ValueError still do.
"""


import math


def finite_number(x) -> bool:
  """A real number (not bool), finite: the test every numeric config check starts with."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class UserError(ValueError):
  """A problem with the user's input or files, with what to do about it, in one line."""


class DivergedError(UserError):
  """Training produced a non-finite loss, gradient or weight (usually: the learning rate)."""


class Terminated(Exception):  # noqa: N818 - named for the signal.
  """SIGTERM outside the training loop; the message says what was saved. Exit status 0."""


def warn(message: str) -> None:
  """A recoverable event, as one line on stderr (process 0 only): never a traceback."""
  import sys

  import jax
  if jax.process_index() == 0:
    print(f'warning: {" ".join(message.split())}', file=sys.stderr, flush=True)
