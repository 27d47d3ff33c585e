"""The training step and the evaluation step: what one step computes, for any method.

Device mechanics (pmap, replication, sharding) live in parallel.py, which
compiles these functions; here is the arithmetic a reader looks for: the
forward pass, the method's loss, gradients averaged over devices, the
optimiser update, and the guard that keeps a non-finite step out of the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from mmtjax import adapt, metrics
from mmtjax.methods.base import Method
from mmtjax.state import MODEL_COLLECTIONS, TrainState


def _freeze(params, labels):
  # Frozen parameters are constants inside the step: no backward pass through them.
  return jax.tree.map(lambda p, lab: jax.lax.stop_gradient(p) if lab == 'frozen' else p, params, labels)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, method: Method, model, tx,
               weights: Mapping[str, float], schedule: optax.Schedule, labels: Any,
               axis_name: str) -> tuple[TrainState, dict[str, jax.Array]]:
  """One training step on this device's share of the batch (runs inside pmap over `axis_name`).

  Gradients and metrics are averaged over devices; BatchNorm statistics are
  synchronised inside the model (axis_name) and memories gather statistics
  from every device, so all replicas stay identical and the step equals a
  single-device step on the global batch.

  NaN/Inf guard: when the loss, a loss term, the gradient norm or the norm
  of the new parameters or model state is not finite, the step returns the
  input state unchanged (step counter included) and metrics['finite'] = 0, so
  a non-finite step never reaches a checkpoint; the host stops at its next
  check (train_lib).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), jax.lax.axis_index(axis_name))

  def loss_fn(params):
    variables = {'params': _freeze(params, labels), **state.model_state}
    outputs, new_model_state = method.apply(model, variables, batch, train=True, rngs={'dropout': rng},
                                            mutable=list(MODEL_COLLECTIONS))
    loss, terms = method.loss(outputs, batch['query_labels'], weights, axis_name)
    return loss, (terms, method.logged(outputs), new_model_state)

  (loss, (terms, logged, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  stats = jax.lax.pmean({'loss': loss, **{f'loss_{k}': v for k, v in terms.items()}, **logged}, axis_name)
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


def eval_step(variables: Any, batch: Mapping[str, jax.Array], *, method: Method, model,
              mode: Mapping[str, Any], output: str = 'counts', kshot: str = 'model',
              adaptation: adapt.Adaptation | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One evaluation batch in one of the method's eval modes -> (scores, histograms) per episode.

  kshot: 'model' runs the method's own k-shot path; 'vote' runs one 1-shot
  prediction per support and combines them by HSNet's vote (metrics.vote).
  scores, output 'counts': [B, 4] intersection/union counts at the label size
  (see metrics); 'original_counts': the same at the original resolution
  (PFENet's protocol; the batch holds 'original_labels' and 'original_sizes',
  metrics.original_canvas); 'logits': [B, h, w, 2] ('vote': [B, K, h, w, 2]).
  histograms: the method's per-episode counts (e.g. which memory items the
  episode's images chose; with 'vote', summed over the K 1-shot passes), {}
  when it has none.

  adaptation: each episode first adapts its own copy of the method's
  adaptable parameters on its own supports (adapt.adapt_batch: vmap over
  episodes of a scan over steps), then runs the forward above with them.
  """
  if adaptation is not None:
    def unadapted(adapted_variables, episode):
      return eval_step(adapted_variables, episode, method=method, model=model, mode=mode, output=output,
                       kshot=kshot)
    return adapt.per_episode(unadapted, method, model, variables, batch, mode=mode, adaptation=adaptation)

  def forward(support_images, support_labels):
    shots = {**batch, 'support_images': support_images, 'support_labels': support_labels}
    outputs = method.apply(model, variables, shots, train=False, mode=mode)
    scores = method.foreground_logit(outputs) if output == 'original_counts' else outputs['logits']
    return scores, method.histograms(outputs)

  if kshot == 'vote' and batch['support_images'].shape[1] > 1:
    # One 1-shot pass per support (vmapped over the shot axis, kept as a 1-long axis).
    scores, hists = jax.vmap(lambda x, y: forward(x[:, None], y[:, None]), in_axes=1, out_axes=1)(
        batch['support_images'], batch['support_labels'])
    hists = {k: v.sum(axis=1) for k, v in hists.items()}
  elif kshot in ('model', 'vote'):
    scores, hists = forward(batch['support_images'], batch['support_labels'])
  else:
    raise ValueError(f"kshot must be 'model' or 'vote', got {kshot!r}")
  if output == 'counts':
    return metrics.episode_counts(scores, batch['query_labels']), hists
  if output == 'original_counts':
    return metrics.original_resolution_counts(scores, batch['original_labels'], batch['original_sizes']), hists
  return scores, hists
