"""The one place that compiles steps (jax.pmap over axis 'batch') and shards batches.

Since JAX 0.8 pmap runs on jit(shard_map); replicated state is therefore a
jax.Array with a leading device axis, laid out with a NamedSharding over the
local devices (no deprecated device_put_replicated / x[0] idioms).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mmtjax import losses, metrics
from mmtjax.errors import UserError
from mmtjax.state import MODEL_COLLECTIONS, TrainState

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


def _freeze(params, labels):
  # Frozen parameters are constants inside the step: no backward pass through them.
  return jax.tree.map(lambda p, lab: jax.lax.stop_gradient(p) if lab == 'frozen' else p,
                      params, labels)


def make_train_step(model, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    schedule: optax.Schedule, labels: Any, devices=None) -> Callable:
  """pmap'd (state, batch) -> (state, metrics); the state buffers are donated.

  Gradients and metrics are averaged over devices; BatchNorm statistics are
  synchronised inside the model (axis_name) and the style memory gathers
  statistics from every device, so all replicas stay identical and the step
  equals a single-device step on the global batch.

  NaN/Inf guard: when the loss, a loss term, the gradient norm or the norm
  of the new parameters or model state is not finite, the step returns the input state unchanged (step counter included)
  and metrics['finite'] = 0, so a non-finite step never reaches a checkpoint;
  the host stops at its next check (train_lib).
  """
  weights = dict(config.loss)

  def step_fn(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             jax.lax.axis_index(AXIS))

    def loss_fn(params):
      variables = {'params': _freeze(params, labels), **state.model_state}
      outputs, new_model_state = model.apply(
          variables, batch['support_images'], batch['support_labels'], batch['query_images'],
          train=True, rngs={'dropout': rng}, mutable=list(MODEL_COLLECTIONS))
      loss, terms = losses.total_loss(outputs, batch['query_labels'], weights, AXIS)
      return loss, (terms, outputs.get('log', {}), new_model_state)

    (loss, (terms, logged, new_model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    stats = {'loss': loss, **{f'loss_{k}': v for k, v in terms.items()}, **logged}
    stats = jax.lax.pmean(stats, AXIS)
    stats['lr'] = schedule(state.step)
    stats['grad_norm'] = optax.global_norm(grads)
    stats['param_norm'] = optax.global_norm(params)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state={c: new_model_state.get(c, state.model_state[c])
                                           for c in MODEL_COLLECTIONS})
    # The new parameters and model state too: a finite loss with a huge
    # learning rate can still produce non-finite weights, which must never be
    # stored (or checkpointed).
    state_norm = optax.global_norm(jax.tree.leaves(new_state.model_state))
    finite = jnp.all(jnp.isfinite(jnp.stack([stats[k] for k in stats if k.startswith('loss')] +
                                            [stats['grad_norm'], stats['param_norm'], state_norm])))
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    stats['finite'] = finite.astype(jnp.float32)
    return new_state, stats

  return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,), devices=devices)


def make_eval_step(model, transfer: bool, devices=None, output: str = 'counts') -> Callable:
  """pmap'd (variables, batch) -> (scores, histograms), per episode [devices, per_device, ...]:

  scores, output 'counts': [4] intersection/union counts at the label size
  (see metrics); 'logit_diff': [h, w] foreground minus background logit at
  the model's output size, for scoring at the original resolution on the host.
  histograms: the model's per-episode 'histograms' outputs (e.g. which memory
  items the episode's images chose), {} when it has none.
  """

  def step_fn(variables, batch):
    out = model.apply(variables, batch['support_images'], batch['support_labels'],
                      batch['query_images'], train=False, transfer=transfer)
    hists = out.get('histograms', {})
    if output == 'logit_diff':
      return out['logits'][..., 1] - out['logits'][..., 0], hists
    return metrics.episode_counts(out['logits'], batch['query_labels']), hists

  return jax.pmap(step_fn, axis_name=AXIS, devices=devices)


def eval_variables(state: TrainState) -> dict:
  """The variables an eval step reads, from a (replicated) TrainState."""
  return {'params': state.params, **state.model_state}


def host_scalars(tree: Any) -> dict[str, float]:
  """Replicated scalar metrics -> python floats (one transfer)."""
  return {k: float(v) for k, v in unreplicate(tree).items()}

