"""Command-line plumbing shared by train.py and evaluate.py: one line per error.

- A `UserError` (bad config, path, dataset, checkpoint, weights) and an
  OSError from the system (disk full, permission denied, missing file) print
  one line, `error: ...`, and exit with status 2.
- Anything else is a bug in mmtjax: one line says so and names a file holding
  the full traceback (in the workdir when there is one); exit status 1.
- `--verbosity=1` (or MMTJAX_TRACEBACK=1) prints tracebacks instead, for bug
  reports, and shows the libraries' INFO logs.

The command lines keep JAX's compiled programs in a persistent cache
(`compile_cache`), so a repeated command skips most of its compiling.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import TypeVar

from absl import flags
from absl import logging as absl_logging

from mmtjax.errors import Terminated, UserError

T = TypeVar('T')


def _one_line(message: str) -> str:
  # Nested errors (absl wraps config-file errors) are joined into one line.
  return ' '.join(part.strip() for part in str(message).splitlines() if part.strip())


def print_config(config, *, training: bool) -> None:
  """The config as a command would run it: the dataset's own splits and protocol filled in, every
  field checked (one error line otherwise); nothing is built, trained or written."""
  from mmtjax import config_lib
  from mmtjax.data import datasets
  datasets.resolve(config, training=training)
  config_lib.validate(config)
  print(config)


def fail(message: str, status: int = 2) -> None:
  print(f'error: {_one_line(message)}', file=sys.stderr, flush=True)
  sys.exit(status)


def verbose() -> bool:
  """Tracebacks wanted: --verbosity was given, or MMTJAX_TRACEBACK=1."""
  if os.environ.get('MMTJAX_TRACEBACK', '') not in ('', '0'):
    return True
  return 'verbosity' in flags.FLAGS and flags.FLAGS['verbosity'].present


def _config_error(e: BaseException, argv: list[str]) -> str:
  raw = str(e) or type(e).__name__
  if 'Traceback (most recent call last)' in raw:
    # absl embeds the config file's traceback: keep its last line, the error itself.
    last = [line for line in raw.splitlines() if line.strip()][-1].strip()
    head, _, message = last.partition(': ')
    return message if message and head.replace('.', '').replace('_', '').isalnum() else last
  text = _one_line(raw)
  # ml_collections shows the offending key with repr(): unescape its quotes.
  text = text.replace("\\'", "'").replace('\\n', ' ')
  key = text.strip('"\' ')
  if 'Did you mean' in key:  # ml_collections' suggestion for a misspelt section or field.
    name, _, hint = key.partition(' Did you mean ')
    return f"unknown config field '{name.strip(chr(39))}'; did you mean {hint.replace(chr(34), chr(39))}"
  if isinstance(e, (KeyError, AttributeError)) or key.isidentifier():
    for arg in argv:  # Name the override that holds the unknown key.
      name = arg.split('=', 1)[0]
      if name.startswith('--config.') and key in name.split('.'):
        return (f'unknown config field {name[len("--config."):]!r} in {arg}; check its spelling '
                f'against the config file')
  return text


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with a one-line error (bad config file, arg or override).

  Library INFO logs (orbax writes several lines per checkpoint) are hidden
  unless --verbosity is given: the console shows the progress lines and
  warnings.
  """
  for i, arg in enumerate(argv):  # A config path that is not a file: say so before absl tries.
    value = argv[i + 1] if arg == '--config' and i + 1 < len(argv) else (
        arg.split('=', 1)[1] if arg.startswith('--config=') else None)
    if value is not None:
      path = value.split(':', 1)[0]
      if os.path.isdir(path):
        fail(f'--config {path} is a directory; give a config file, e.g. {os.path.join(path, "default.py")}')
      if not os.path.isfile(path):
        fail(f'--config {path}: no such config file (the configs are in configs/, e.g. configs/default.py)')
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - any error while loading the config file is the user's.
    if os.environ.get('MMTJAX_TRACEBACK', '') not in ('', '0'):
      raise
    fail(_config_error(e, argv))
  if len(rest) > 1:  # A stray word: absl would print the whole help; one line names it.
    fail(f'unexpected argument {rest[1]!r}: every option is --name=value, and a list takes no spaces '
         f'(e.g. --shots=1,5)')
  if not flags.FLAGS['verbosity'].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
    quiet_libraries()
  return rest


def quiet_libraries() -> None:
  """Hides orbax / tfds / absl INFO and WARNING chatter (our own warnings use the 'mmtjax' logger)."""
  import logging
  for name in ('absl', 'orbax', 'tensorflow_datasets', 'jax._src.distributed', 'etils'):
    logging.getLogger(name).setLevel(logging.ERROR)
  absl_logging.set_verbosity(absl_logging.ERROR)


COMPILE_CACHE_ENV = 'MMTJAX_COMPILE_CACHE'


def compile_cache() -> str | None:
  """Turns on JAX's persistent compilation cache for this process; returns its folder (None: off).

  The folder is $MMTJAX_COMPILE_CACHE, else $XDG_CACHE_HOME/mmtjax/jax (by
  default ~/.cache/mmtjax/jax), created private to the user (mode 0700): it
  holds the programs XLA compiled on this machine, keyed by the program, its
  shapes, the JAX version and the device. MMTJAX_COMPILE_CACHE=off turns it
  off. Only compiles that took 1 s or more are kept (JAX's default rule).
  """
  where = os.environ.get(COMPILE_CACHE_ENV, '')
  if where.lower() in ('off', '0', 'none', 'false'):
    return None
  if not where:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    where = os.path.join(base, 'mmtjax', 'jax')
  try:
    os.makedirs(where, mode=0o700, exist_ok=True)
  except OSError:
    return None  # A read-only home: run without the cache rather than fail.
  import jax
  jax.config.update('jax_compilation_cache_dir', where)
  return where


def _os_message(e: OSError) -> str:
  where = f' ({e.filename})' if getattr(e, 'filename', None) else ''
  if e.errno == errno.ENOSPC:
    return f'no space left on the device{where}; free some space and rerun the same command'
  if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
    return f'permission denied{where}; choose a writable path'
  if e.errno == errno.ENOENT:
    return f'no such file or directory{where}'
  return f'{e.strerror or e}{where}'


def _report_bug(e: BaseException, workdir: str | None) -> None:
  text = ''.join(traceback.format_exception(e))
  directory = workdir if workdir and os.path.isdir(workdir) else tempfile.gettempdir()
  path = os.path.join(directory, f'mmtjax_error_{time.strftime("%Y%m%d-%H%M%S")}_{os.getpid()}.txt')
  try:
    with open(path, 'w') as f:
      f.write(text)
  except OSError:
    path = None
  where = f'the traceback is in {path}' if path else 'rerun with --verbosity=1 for the traceback'
  fail(f'internal error (a bug in mmtjax, not in your input): {type(e).__name__}: '
       f'{_one_line(str(e))[:300]}; {where}; please report it', status=1)


def run(fn: Callable[[], T], workdir: str | None = None) -> T:
  """Runs fn with the error policy of this module (see the module docstring)."""
  try:
    return fn()
  except UserError as e:
    if verbose():
      raise
    fail(str(e))
  except OSError as e:
    if verbose():
      raise
    fail(_os_message(e))
  except Terminated as e:
    print(_one_line(str(e)), flush=True)
    sys.exit(0)
  except KeyboardInterrupt:
    fail('interrupted', status=130)
  except Exception as e:  # noqa: BLE001 - everything else is a bug: keep its traceback.
    if verbose():
      raise
    _report_bug(e, workdir)
