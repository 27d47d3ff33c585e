"""orbax checkpoints of the whole TrainState plus the config that wrote them."""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

# Config sections that define the network: a checkpoint is only restorable
# under a config that agrees on these.
_MODEL_FIELDS = ('model', 'memory')


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used (missing, corrupt, or from another model)."""


def _model_signature(config: dict) -> dict:
  return {k: config.get(k) for k in _MODEL_FIELDS}


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
  """CheckpointManager over `<workdir>/checkpoints` holding items 'state' and 'config'."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, create: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=('state', 'config'),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config_to_dict(config))))
    self.manager.wait_until_finished()

  def saved_config(self, step: int) -> dict:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
    except Exception as e:
      raise CheckpointError(f'checkpoint {self.directory}/{step} is unreadable: {e}') from e

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
      raise CheckpointError(f'checkpoint {self.directory}/{step} is unreadable: '
                            f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}') from e

  def close(self) -> None:
    self.manager.close()
