"""Test-time adaptation per episode: a few optimiser steps on the episode's own supports.

For a batch of B episodes, the method's adaptable parameters get a leading
episode axis: `jax.vmap` over episodes of a `jax.lax.scan` over optimiser
steps, inside the compiled evaluation step (steps.eval_step). Every episode
starts from the checkpoint's weights, sees only its own images, and nothing
adapted outlives the step. The backbone stays frozen, BatchNorm uses its
running statistics (the forward is the evaluation's, train=False) and MMT's
style memory is read, never written.

Losses on an episode with K labelled supports:
  K >= 2, 'leave_one_out': each support is predicted from the other K - 1,
    cross-entropy against its own mask (mean over the K);
  K = 1, 'copy_paste' (the default for K = 1): the support and `copies`
    copy-paste copies of it (copy_paste.py: its object pasted elsewhere on
    itself, drawn once per episode from a key that depends only on the
    episode, its `episode_seed`), then leave-one-out over the 1 + copies shots;
  'augment': each support is predicted from an augmented copy of itself
    (flip, scale, colour jitter), a fresh draw per step from the same key;
  with `use_query`, + query_weight x the mean binary entropy of the
    unlabelled query's prediction (the query's labels are never read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from ml_collections import config_dict

from mmtjax import copy_paste, losses, ops
from mmtjax.errors import UserError, finite_number
from mmtjax.models import backbones

LOSSES = ('auto', 'leave_one_out', 'augment', 'copy_paste')
OPTIMIZERS = ('sgd', 'adam')
ADAPT_SUFFIX = '+adapt'
_COPIES_STREAM = 2 ** 31 - 1  # fold_in(episode key, this): the copy_paste copies' key


@dataclasses.dataclass(frozen=True)
class Adaptation:
  """The options of config.eval.adapt, checked (hashable: it keys compiled steps); the defaults
  here are config.eval.adapt's (config_section), chosen on the source validation split
  (benchmarks/adaptation.py select; docs/assumptions.md), never on a target.

  steps: optimiser steps per episode (0 in a config: off).
  groups: the method's adapt_groups to tune (config None: the method's adapt_default).
  optimizer, lr: optax 'adam' or 'sgd' and its learning rate.
  loss: 'auto' (K >= 2: 'leave_one_out', K = 1: 'copy_paste'), 'leave_one_out', 'copy_paste'
    (K = 1) or 'augment'.
  use_query, query_weight: + query_weight x the entropy of the unlabelled query's prediction.
  flip, scale, jitter: the 'augment' loss's copy of a support (horizontal flip with p = 0.5, a
    log-uniform zoom in [scale[0], scale[1]] about the centre, per-channel gain and offset in
    [-jitter, jitter] on the normalised image); flip and scale also draw the 'copy_paste' copies.
  copies: the 'copy_paste' loss's copies of the support (HERA: 2).
  seed: folded with each episode's own seed for the augmentation draws.
  """
  steps: int
  groups: tuple[str, ...]
  optimizer: str = 'adam'
  lr: float = 1e-3
  loss: str = 'auto'
  use_query: bool = False
  query_weight: float = 0.1
  flip: bool = True
  scale: tuple[float, float] = (0.8, 1.2)
  jitter: float = 0.2
  copies: int = 2
  seed: int = 0

  def loss_for(self, shots: int) -> str:
    if self.loss == 'auto':
      return 'leave_one_out' if shots >= 2 else 'copy_paste'
    return self.loss


def config_section(steps: int = 0) -> ml_collections.ConfigDict:
  """config.eval.adapt with the defaults of Adaptation (steps 0: off; groups None: the method's)."""
  fields = {f.name: f.default for f in dataclasses.fields(Adaptation) if f.name not in ('steps', 'groups')}
  return ml_collections.ConfigDict({'steps': steps, 'groups': config_dict.placeholder(tuple), **fields})


def from_config(config: ml_collections.ConfigDict, method) -> Adaptation | None:
  """config.eval.adapt as an Adaptation, or None when it is off (steps 0 or absent).

  Raises UserError (one line) for an unknown group, optimiser or loss, or a
  leave-one-out loss on 1-shot episodes.
  """
  a = config.eval.get('adapt')
  if a is None or not a.get('steps'):
    return None
  groups = a.get('groups')
  if groups is None:
    groups = method.adapt_default
  elif isinstance(groups, str):
    groups = tuple(g.strip() for g in groups.split(',') if g.strip())
  groups = tuple(groups)
  known = tuple(method.adapt_groups)
  if not known:
    raise UserError(f'eval.adapt: the method {method.name!r} has no adaptable parameter groups')
  unknown = [g for g in groups if g not in known]
  if unknown or not groups:
    raise UserError(f'eval.adapt.groups {unknown or list(groups)} are not groups of {method.name!r}; '
                    f'it has {list(known)} (the backbone stays frozen)')
  checks = [
      (isinstance(a.steps, int) and a.steps >= 0, 'eval.adapt.steps must be an integer >= 0 (0: off)'),
      (a.get('optimizer', 'adam') in OPTIMIZERS, f'eval.adapt.optimizer must be one of {OPTIMIZERS}'),
      (_positive(a.get('lr', 1e-3)), 'eval.adapt.lr must be a finite number > 0'),
      (a.get('loss', 'auto') in LOSSES, f'eval.adapt.loss must be one of {LOSSES}'),
      (a.get('loss', 'auto') != 'leave_one_out' or config.data.shot >= 2,
       "eval.adapt.loss 'leave_one_out' needs data.shot >= 2; use 'copy_paste' or 'augment' (or 'auto') "
       'for 1-shot'),
      (a.get('loss', 'auto') != 'copy_paste' or config.data.shot == 1,
       "eval.adapt.loss 'copy_paste' makes pseudo-shots for 1-shot episodes; use 'leave_one_out' (or 'auto') "
       'with data.shot >= 2'),
      (isinstance(a.get('copies', 2), int) and a.get('copies', 2) >= 1, 'eval.adapt.copies must be an integer >= 1'),
      (_positive(a.get('query_weight', 0.1), zero=True), 'eval.adapt.query_weight must be >= 0'),
      (len(tuple(a.get('scale', (0.8, 1.2)))) == 2 and 0 < min(a.get('scale', (0.8, 1.2))),
       'eval.adapt.scale must be (min, max) with min > 0'),
      (_positive(a.get('jitter', 0.2), zero=True), 'eval.adapt.jitter must be >= 0'),
  ]
  for ok, message in checks:
    if not ok:
      raise UserError(message)
  return Adaptation(steps=int(a.steps), groups=groups, optimizer=a.get('optimizer', 'adam'),
                    lr=float(a.get('lr', 1e-3)), loss=a.get('loss', 'auto'), use_query=bool(a.get('use_query')),
                    query_weight=float(a.get('query_weight', 0.1)), flip=bool(a.get('flip', True)),
                    scale=tuple(float(s) for s in a.get('scale', (0.8, 1.2))), jitter=float(a.get('jitter', 0.2)),
                    copies=int(a.get('copies', 2)), seed=int(a.get('seed', 0)))


def _positive(x, zero: bool = False) -> bool:
  return finite_number(x) and (x >= 0 if zero else x > 0)


def split(params: Any, prefixes: tuple[str, ...]) -> tuple[dict, dict]:
  """(adaptable, frozen) flat {path: array} dicts; a path is adaptable when its first name is
  one of `prefixes` (the method's groups resolved to top-level module names)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  adaptable = {k: v for k, v in flat.items() if k[0] in prefixes}
  return adaptable, {k: v for k, v in flat.items() if k[0] not in prefixes}


def merge(adaptable: Mapping, frozen: Mapping) -> dict:
  return flax.traverse_util.unflatten_dict({**frozen, **adaptable})


def prefixes(method, groups: tuple[str, ...]) -> tuple[str, ...]:
  return tuple(p for g in groups for p in method.adapt_groups[g])


def optimizer(adaptation: Adaptation) -> optax.GradientTransformation:
  return {'sgd': optax.sgd, 'adam': optax.adam}[adaptation.optimizer](adaptation.lr)


def augment(key: jax.Array, image: jax.Array, mask: jax.Array, adaptation: Adaptation
            ) -> tuple[jax.Array, jax.Array]:
  """A random flip, scale about the centre and colour jitter of one [h, w, 3] image and its
  [h, w] mask (0 / 1 / 255); pixels the scaled image does not cover are ignored (255)."""
  k_flip, k_scale, k_gain, k_bias = jax.random.split(key, 4)
  h, w = mask.shape
  if adaptation.flip:
    flip = jax.random.bernoulli(k_flip)
    image = jnp.where(flip, image[:, ::-1], image)
    mask = jnp.where(flip, mask[:, ::-1], mask)
  lo, hi = adaptation.scale
  s = jnp.exp(jax.random.uniform(k_scale, minval=jnp.log(lo), maxval=jnp.log(hi)))
  scale = jnp.stack([s, s])
  translation = jnp.array([h, w], jnp.float32) * (1.0 - s) / 2.0

  def warp(x):
    return jax.image.scale_and_translate(x, x.shape, (0, 1), scale, translation, 'linear', antialias=False)

  maps = jnp.stack([(mask == 1), (mask == ops.IGNORE_LABEL), jnp.ones_like(mask, bool)], -1).astype(jnp.float32)
  fg, ignore, covered = jnp.moveaxis(warp(maps), -1, 0)
  mask = jnp.where((covered < 0.5) | (ignore >= 0.5), ops.IGNORE_LABEL, (fg >= 0.5).astype(mask.dtype))
  image = warp(image)
  j = adaptation.jitter
  gain = 1.0 + jax.random.uniform(k_gain, (1, 1, 3), minval=-j, maxval=j)
  bias = jax.random.uniform(k_bias, (1, 1, 3), minval=-j, maxval=j)
  return image * gain + bias, mask.astype(jnp.int32)


def pseudo_episodes(key: jax.Array, support_images: jax.Array, support_labels: jax.Array, loss: str,
                    adaptation: Adaptation, support_features: dict | None = None) -> dict[str, jax.Array]:
  """The labelled pseudo-episodes of one episode's K supports ([K, h, w, 3], [K, h, w]).

  'leave_one_out': K pseudo-episodes, support i the query of the other K - 1 (with the
  supports' cached backbone features {stage: [K, ...]}, when given, rearranged alike);
  'augment': K pseudo-episodes, support i the query of an augmented copy of itself (new
  images: the backbone runs on them).
  """
  k = support_images.shape[0]
  if loss in ('leave_one_out', 'copy_paste'):  # copy_paste: on the support and its copies
    others = jnp.array([[j for j in range(k) if j != i] for i in range(k)])
    out = {'support_images': support_images[others], 'support_labels': support_labels[others],
           'query_images': support_images, 'query_labels': support_labels}
    if support_features is not None:
      out['features'] = {n: jnp.concatenate([v[others].reshape(k * (k - 1), *v.shape[1:]), v])
                         for n, v in support_features.items()}
    return out
  images, labels = jax.vmap(lambda kk, x, y: augment(kk, x, y, adaptation))(
      jax.random.split(key, k), support_images, support_labels)
  return {'support_images': images[:, None], 'support_labels': labels[:, None],
          'query_images': support_images, 'query_labels': support_labels}


def binary_entropy(logits: jax.Array) -> jax.Array:
  """Mean per-pixel entropy of [B, h, w, 2] logits' softmax."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def with_pseudo_shots(model, variables: Any, episode: Mapping[str, Any], key: jax.Array,
                      adaptation: Adaptation) -> dict[str, Any]:
  """A 1-shot episode whose supports are its support and `adaptation.copies` copy-paste copies
  of it (copy_paste.py), drawn from `key`; with cached backbone features, the copies' features
  are computed here (once per episode: the backbone is frozen) and appended."""
  images, labels = copy_paste.with_copies(key, episode['support_images'], episode['support_labels'],
                                          adaptation.copies, flip=adaptation.flip, scale=adaptation.scale)
  out = {**episode, 'support_images': images, 'support_labels': labels}
  if 'support_features' in episode:
    stop = max((n for n in episode['support_features'] if n in backbones.STAGES), key=backbones.STAGES.index)
    new = model.apply(variables, images[1:], stop, method='backbone_features')
    out['support_features'] = {n: jnp.concatenate([v, new[n].astype(v.dtype)])
                               for n, v in episode['support_features'].items()}
  return out


def adaptation_loss(method, model, variables: Any, episode: Mapping[str, jax.Array], key: jax.Array, *,
                    mode: Mapping[str, Any], adaptation: Adaptation, shots: Mapping[str, Any] | None = None
                    ) -> jax.Array:
  """The adaptation loss of one episode (arrays without the episode axis) under `variables`;
  `shots`: the labelled images the loss learns from (with_pseudo_shots; default: the episode)."""
  shots = episode if shots is None else shots
  pseudo = pseudo_episodes(key, shots['support_images'], shots['support_labels'],
                           adaptation.loss_for(episode['support_images'].shape[0]), adaptation,
                           shots.get('support_features'))
  outputs = method.apply(model, variables, pseudo, train=False, mode=mode)
  loss = losses.pixel_cross_entropy(outputs['logits'], pseudo['query_labels'])
  if adaptation.use_query:
    real = {'support_images': episode['support_images'][None], 'support_labels': episode['support_labels'][None],
            'query_images': episode['query_images'][None]}
    if 'support_features' in episode:
      real['features'] = one_episode_features(episode)
    loss = loss + adaptation.query_weight * binary_entropy(
        method.apply(model, variables, real, train=False, mode=mode)['logits'])
  return loss


def adapt_episode(method, model, variables: Any, episode: Mapping[str, jax.Array], *, mode: Mapping[str, Any],
                  adaptation: Adaptation) -> tuple[dict, jax.Array]:
  """(adapted params as a flat {path: array} dict, loss before each step [steps]) of one episode.

  The key is the adaptation seed folded with the episode's own seed (pipeline:
  a hash of its class and images), then with the step: the same episode draws
  the same augmentations wherever it sits in whichever batch.
  """
  adaptable, frozen = split(variables['params'], prefixes(method, adaptation.groups))
  tx = optimizer(adaptation)
  key = jax.random.fold_in(jax.random.key(adaptation.seed), episode['episode_seed'])
  rest = {k: v for k, v in variables.items() if k != 'params'}
  shots = None
  if adaptation.loss_for(episode['support_images'].shape[0]) == 'copy_paste':
    # Drawn once per episode (as HERA), from a stream the steps' keys (fold_in(key, step)) never use.
    shots = with_pseudo_shots(model, variables, episode, jax.random.fold_in(key, _COPIES_STREAM), adaptation)

  def loss_fn(p, k):
    return adaptation_loss(method, model, {**rest, 'params': merge(p, frozen)}, episode, k, mode=mode,
                           adaptation=adaptation, shots=shots)

  def step(carry, i):
    p, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, jax.random.fold_in(key, i))
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), loss

  (adapted, _), trace = jax.lax.scan(step, (adaptable, tx.init(adaptable)), jnp.arange(adaptation.steps))
  return adapted, trace


def by_episode(batch: Mapping[str, Any]) -> dict[str, Any]:
  """A batch whose cached backbone 'features' ([B*K supports then B queries, ...]) are split by
  episode ('support_features' [B, K, ...], 'query_features' [B, ...]), so that vmap over the
  episode axis hands each episode its own."""
  if 'features' not in batch:
    return dict(batch)
  b, k = batch['support_images'].shape[:2]
  out = {key: v for key, v in batch.items() if key != 'features'}
  out['support_features'] = {n: v[:b * k].reshape(b, k, *v.shape[1:]) for n, v in batch['features'].items()}
  out['query_features'] = {n: v[b * k:] for n, v in batch['features'].items()}
  return out


def one_episode_features(episode: Mapping[str, Any]) -> dict[str, jax.Array]:
  """One episode's features (by_episode) as a one-episode batch's: its K supports then its query."""
  return {n: jnp.concatenate([v, episode['query_features'][n][None]])
          for n, v in episode['support_features'].items()}


def adapt_batch(method, model, variables: Any, batch: Mapping[str, jax.Array], *, mode: Mapping[str, Any],
                adaptation: Adaptation) -> tuple[dict, jax.Array]:
  """adapt_episode vmapped over a batch's episodes: params with a leading [B] axis, losses [B, steps]."""
  episode_keys = ('support_images', 'support_labels', 'query_images', 'episode_seed', 'support_features',
                  'query_features')
  split_batch = by_episode(batch)
  episodes = {k: split_batch[k] for k in episode_keys if k in split_batch}
  return jax.vmap(lambda ep: adapt_episode(method, model, variables, ep, mode=mode, adaptation=adaptation))(episodes)


def per_episode(fn, method, model, variables: Any, batch: Mapping[str, jax.Array], *, mode: Mapping[str, Any],
                adaptation: Adaptation) -> Any:
  """fn(variables, one-episode batch) for every episode of `batch` under that episode's own
  adapted parameters (adapt_batch), vmapped over episodes; the outputs keep the episode axis."""
  tuned, _ = adapt_batch(method, model, variables, batch, mode=mode, adaptation=adaptation)
  frozen = split(variables['params'], prefixes(method, adaptation.groups))[1]

  def one(params, episode):
    single = {k: v for k, v in episode.items() if k not in ('support_features', 'query_features')}
    single = jax.tree.map(lambda x: x[None], single)
    if 'support_features' in episode:
      single['features'] = one_episode_features(episode)
    out = fn({**variables, 'params': merge(params, frozen)}, single)
    return jax.tree.map(lambda x: x[0], out)

  return jax.vmap(one)(tuned, by_episode(batch))
