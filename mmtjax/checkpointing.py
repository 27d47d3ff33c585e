"""orbax checkpoints of the whole TrainState plus the config that wrote them."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import socket
import time
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mmtjax.errors import UserError, warn
from mmtjax.models import backbones

# Config sections that define the network: a checkpoint is only restorable
# under a config that agrees on these.
_MODEL_FIELDS = ('model', 'memory')
SUBDIR = 'checkpoints'  # The latest max_to_keep checkpoints.
BEST_SUBDIR = 'checkpoints_best'  # The best one by validation mIoU.


class CheckpointError(UserError):
  """A checkpoint that cannot be used (missing, corrupt, or from another model)."""


# Fields of those sections that do not change the network once trained ('attention': the same
# weights computed by a fused or a plain attention; 'cache_features_mb': where its features are kept).
_NOT_IN_SIGNATURE = ('pretrained', 'attention', 'cache_features_mb')


# Model fields added after runs were saved, with the value those runs had.
_ADDED_FIELDS = {**backbones.READOUT_DEFAULTS, 'neck': 'project'}


def _model_signature(config: dict) -> dict:
  out = {k: {f: v for f, v in (config.get(k) or {}).items() if f not in _NOT_IN_SIGNATURE}
         for k in _MODEL_FIELDS}
  model = out.get('model', {})
  if 'freeze_backbone' in model and model['freeze_backbone'] is None:  # unset: what it resolves to
    model['freeze_backbone'] = backbones.is_vit(model.get('backbone', ''))
  for field, default in _ADDED_FIELDS.items():  # as runs saved before these fields
    if model.get(field, default) == default:
      model.pop(field, None)
  return out


def _flatten(d: Any, prefix: str = '') -> dict:
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flatten(v, f'{prefix}.{k}' if prefix else k))
  return out


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


class Checkpoints:
  """CheckpointManager over `<workdir>/<subdir>` holding items 'state' and 'config'.

  Saves are asynchronous: `save` returns once the arrays are on the host and
  the files are written in the background; `wait` (or `close`) blocks until
  they are committed. A checkpoint becomes visible only when complete (orbax
  writes to a temporary directory and renames it).

  With `best_metric`, only the checkpoint with the highest value of that
  metric is kept (the best-by-validation checkpoint).
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, create: bool = True,
               subdir: str = SUBDIR, best_metric: str | None = None):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, subdir)
    self.failed = False
    if create and jax.process_index() == 0:
      # A save interrupted by a crash or a full disk leaves a temporary
      # directory; only the trainer (holding the workdir lock) removes them.
      for tmp in glob.glob(os.path.join(self.directory, '*.orbax-checkpoint-tmp*')):
        shutil.rmtree(tmp, ignore_errors=True)
    best = {} if best_metric is None else dict(
        best_fn=lambda metrics: metrics[best_metric], best_mode='max',
        keep_checkpoints_without_metrics=False)
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'config'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1 if best_metric else max_to_keep, create=create,
            enable_async_checkpointing=True, **best))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def chosen_step(self, step: int | None = None) -> int:
    """`step` if this directory holds it, else (None) the latest; CheckpointError otherwise."""
    steps = self.all_steps()
    chosen = (steps[-1] if steps else None) if step is None else step
    if chosen not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {self.directory}; available: {steps}')
    return chosen

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           metrics: dict | None = None) -> None:
    """Starts an asynchronous save of host `state`; a previous save is finished first.

    A failed save (this one, or the previous asynchronous one) raises
    CheckpointError; the last complete checkpoint stays the latest.
    """
    try:
      self.manager.save(step, metrics=metrics, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_to_dict(config))))
    except Exception as e:  # noqa: BLE001 - orbax wraps OS errors in its own types.
      self._failed(step, e)

  def check(self) -> None:
    """Raises CheckpointError if the asynchronous save in flight has failed (cheap; call every step)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      self._failed(None, e)

  def _failed(self, step: int | None, e: BaseException) -> None:
    self.failed = True
    try:  # An earlier save may still be in flight: let it finish (or fail) before cleaning up.
      self.manager.wait_until_finished()
    except Exception:  # noqa: BLE001
      pass
    for tmp in glob.glob(os.path.join(self.directory, '*.orbax-checkpoint-tmp*')):
      shutil.rmtree(tmp, ignore_errors=True)
    cause = _os_cause(e)
    reason = ('no space left on the device' if cause is not None and cause.errno == errno.ENOSPC else
              f'{cause.strerror} ({cause.filename})' if cause is not None else _first_line(e))
    latest = [s for s in self._steps_on_disk() if s != step]
    kept = f'step {latest[-1]} is still the latest checkpoint' if latest else 'no checkpoint was kept'
    raise CheckpointError(f'could not write checkpoint{"" if step is None else f" {step}"} to '
                          f'{self.directory}: {reason}; {kept}; fix that and rerun the same command '
                          f'to continue') from e

  def _steps_on_disk(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(d) for d in os.listdir(self.directory) if d.isdigit())

  def saved_config(self, step: int) -> dict:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    except Exception as e:
      raise CheckpointError(f'checkpoint {self.directory}/{step} is unreadable: {_first_line(e)}') from e

  def check_compatible(self, step: int, config: ml_collections.ConfigDict) -> None:
    """Raises CheckpointError naming the first model field that differs."""
    saved = _flatten(_model_signature(self.saved_config(step)))
    mine = _flatten(_model_signature(config_to_dict(config)))
    for key in sorted(set(saved) | set(mine)):
      if saved.get(key) != mine.get(key):
        raise CheckpointError(
            f'checkpoint {self.directory}/{step} was written by a different model config: '
            f'{key}={saved.get(key)!r} there, {mine.get(key)!r} here')

  def restore(self, step: int, template: Any) -> Any:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(template)))['state']
    except Exception as e:
      raise CheckpointError(f'checkpoint {self.directory}/{step} is unreadable: {_first_line(e)}') from e

  def restore_latest(self, template: Any, config: ml_collections.ConfigDict) -> tuple[int | None, Any]:
    """(step, state) of the newest readable checkpoint, or (None, None) when there is none.

    An unreadable checkpoint (corrupt or partially written files) is moved to
    `<workdir>/corrupt_checkpoints/` with a warning, never deleted, and the
    previous one is tried. A checkpoint from a different model config is an
    error, not a fallback.
    """
    for step in reversed(self.all_steps()):
      try:
        self.check_compatible(step, config)
        return step, self.restore(step, template)
      except CheckpointError as e:
        if 'different model config' in str(e):
          raise
        moved = self._quarantine(step)
        warn(f'{e}; moved it to {moved} and trying the previous checkpoint')
    return None, None

  def restore_raw(self, step: int | None = None) -> dict:
    """The saved TrainState as a plain dict of arrays, without a template (latest by default)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoints in {self.directory}')
    try:
      return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))['state']
    except Exception as e:
      raise CheckpointError(f'checkpoint {self.directory}/{step} is unreadable: {_first_line(e)}') from e

  def _quarantine(self, step: int) -> str:
    target_dir = os.path.join(self.workdir, 'corrupt_checkpoints')
    target = os.path.join(target_dir, str(step))
    n = 1
    while os.path.exists(target):
      target, n = os.path.join(target_dir, f'{step}.{n}'), n + 1
    if jax.process_index() == 0:  # One process moves it; the others wait for it.
      os.makedirs(target_dir, exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'quarantine checkpoint {step}')
    self.manager.reload()
    return target

  def close(self) -> None:
    """Finishes the save in flight (raising CheckpointError if it fails) and closes the manager."""
    try:
      self.manager.wait_until_finished()
      if not self.failed:
        self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      if not self.failed:
        self._failed(None, e)
    finally:
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001 - closing after a failed save: nothing more to report.
        pass


def _os_cause(e: BaseException | None) -> OSError | None:
  """The OSError behind an (orbax-wrapped) exception, if any."""
  seen = 0
  while e is not None and seen < 10:
    if isinstance(e, OSError):
      return e
    e, seen = e.__cause__ or e.__context__, seen + 1
  return None


class WorkdirLock:
  """One trainer per workdir: an exclusive lock on `<workdir>/.train.lock` held while training.

  The lock is an fcntl lock, released by the kernel when the process exits,
  so a crashed trainer never leaves a stale lock; the file holds the holder's
  host, pid and start time so a second trainer can name it. Only process 0
  of a multi-process run takes it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), '.train.lock')
    self._fd: int | None = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
      except ValueError:
        holder = {}
      os.close(fd)
      who = (f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
             if holder else 'another process')
      raise UserError(f'{os.path.dirname(self.path)} is in use by another trainer ({who}); '
                      f'wait for it to finish or use another --workdir') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                              'since': time.strftime('%Y-%m-%d %H:%M:%S')}).encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc):
    if self._fd is not None:
      os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__
