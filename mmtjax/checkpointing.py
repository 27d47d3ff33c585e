"""orbax checkpoints of the whole TrainState plus the config that wrote them."""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

# Config sections that define the network: a checkpoint is only restorable
# under a config that agrees on these.
_MODEL_FIELDS = ('model', 'memory')
SUBDIR = 'checkpoints'  # The latest max_to_keep checkpoints.
BEST_SUBDIR = 'checkpoints_best'  # The best one by validation mIoU.


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used (missing, corrupt, or from another model)."""


# Fields of those sections that do not change the network once trained.
_NOT_IN_SIGNATURE = ('pretrained',)


def _model_signature(config: dict) -> dict:
  return {k: {f: v for f, v in (config.get(k) or {}).items() if f not in _NOT_IN_SIGNATURE}
          for k in _MODEL_FIELDS}


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

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict,
           metrics: dict | None = None) -> None:
    """Starts an asynchronous save of host `state`; a previous save is finished first."""
    self.manager.save(step, metrics=metrics, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_to_dict(config))))

  def wait(self) -> None:
    self.manager.wait_until_finished()

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
        logging.warning('%s; moved it to %s and trying the previous checkpoint', e, moved)
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
    self.manager.wait_until_finished()
    self.manager.close()


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f'{type(e).__name__}: {text.splitlines()[0]}' if text else type(e).__name__
