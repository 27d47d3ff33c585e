"""Device mechanics: the one place that compiles steps (jax.pmap over axis 'batch'),
replicates state and shards batches. The steps themselves are in steps.py.

Since JAX 0.8 pmap runs on jit(shard_map); replicated state is therefore a
jax.Array with a leading device axis, laid out with a NamedSharding over the
local devices (no deprecated device_put_replicated / x[0] idioms).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmtjax import methods, steps
from mmtjax.errors import UserError
from mmtjax.state import TrainState

AXIS = 'batch'


def local_sharding(devices=None) -> NamedSharding:
  """Leading axis split over `devices` (default: this process's devices)."""
  mesh = Mesh(np.asarray(devices or jax.local_devices()), (AXIS,))
  return NamedSharding(mesh, PartitionSpec(AXIS))


def replicate(tree: Any, devices=None) -> Any:
  """Host pytree -> one copy per device, as [devices, ...] arrays."""
  devices = devices or jax.local_devices()
  sharding = local_sharding(devices)

  def put(x):
    x = np.asarray(x)
    shards = [jax.device_put(x[None], d) for d in devices]
    return jax.make_array_from_single_device_arrays((len(devices), *x.shape), sharding, shards)

  return jax.tree.map(put, tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of replicated state, as host numpy arrays."""
  # A copy: the device buffers may be donated to the next step while the host
  # copy is still being written by an asynchronous checkpoint.
  return jax.tree.map(lambda x: np.array(x.addressable_shards[0].data)[0], tree)


def local_array(x: jax.Array) -> np.ndarray:
  """This process's [local_devices, ...] part of a pmap output, on the host.

  (np.asarray works only when every shard is addressable, i.e. one process.)
  """
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def shard(batch: Any, devices=None) -> Any:
  """Host batch with leading [devices, ...] -> device arrays, one slice per device."""
  return jax.device_put(batch, local_sharding(devices))


def check_divisible(global_batch: int, num_devices: int) -> int:
  """Episodes per device; a clear error when the batch does not split evenly."""
  if global_batch % num_devices:
    raise UserError(f'global batch of {global_batch} episodes is not divisible by '
                     f'{num_devices} devices')
  return global_batch // num_devices


def make_train_step(model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    schedule: optax.Schedule, labels: Any, devices=None) -> Callable:
  """pmap'd steps.train_step for the config's method: (state, batch) -> (state, metrics).

  The state buffers are donated (the step's output replaces them in place).
  """
  fn = functools.partial(steps.train_step, method=methods.for_config(config), model=model, tx=tx,
                         weights=dict(config.loss), schedule=schedule, labels=labels, axis_name=AXIS)
  return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def make_eval_step(method, model, mode, devices=None, output: str = 'counts', kshot: str = 'model',
                   adaptation=None) -> Callable:
  """pmap'd steps.eval_step: (variables, batch) -> (scores, histograms), per episode
  [devices, per_device, ...]; `mode` is one of method.eval_modes' values; `adaptation`
  (adapt.Adaptation or None) adapts each episode first."""
  fn = functools.partial(steps.eval_step, method=method, model=model, mode=mode, output=output, kshot=kshot,
                         adaptation=adaptation)
  return jax.pmap(fn, axis_name=AXIS, devices=devices)


def eval_variables(state: TrainState) -> dict:
  """The variables an eval step reads, from a (replicated) TrainState."""
  return {'params': state.params, **state.model_state}


def host_scalars(tree: Any) -> dict[str, float]:
  """Replicated scalar metrics -> python floats (one transfer)."""
  return {k: float(v) for k, v in unreplicate(tree).items()}

