"""Config helpers: the compact `file.py:key=value,...` argument and validation."""

from __future__ import annotations

import math
import os

import ml_collections

from mmtjax.errors import UserError
from mmtjax.models import MODELS


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'key=value,key=value' against typed defaults; unknown keys are errors."""
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    if '=' not in item:
      raise UserError(f'config arg {item!r} is not key=value (known keys: {sorted(defaults)})')
    key, value = item.split('=', 1)
    if key not in defaults:
      raise UserError(f'unknown config arg {key!r}; known keys: {sorted(defaults)}')
    kind = type(defaults[key])
    try:
      out[key] = (value.lower() in ('1', 'true', 'yes')) if kind is bool else kind(value)
    except ValueError:
      raise UserError(f'config arg {key}={value!r} is not a valid {kind.__name__}') from None
  return ml_collections.ConfigDict(out)


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one line naming the first invalid field, before any work is done."""
  t, d, e = config.train, config.data, config.eval
  checks = [
      (config.model.name in MODELS, f'model.name must be one of {MODELS}'),
      (d.shot >= 1, 'data.shot must be >= 1'),
      (-1 <= d.fold <= 3, 'data.fold must be -1 (all classes) or 0..3'),
      (d.image_size >= 16, 'data.image_size must be >= 16'),
      (d.get('num_workers', 1) >= 1, 'data.num_workers must be >= 1'),
      (d.get('min_pixels', 0) >= 0, 'data.min_pixels must be >= 0'),
      (not d.get('data_dir') or not os.path.exists(d.data_dir) or os.path.isdir(d.data_dir),
       f'data.data_dir {d.get("data_dir")} is a file, not a directory'),
      (t.batch_size >= 1, 'train.batch_size must be >= 1'),
      (t.num_steps >= 1 or t.get('epochs', 0) > 0, 'train.num_steps must be >= 1 (or set train.epochs)'),
      (t.get('epochs', 0) >= 0, 'train.epochs must be >= 0'),
      (_number(t.lr) and t.lr > 0, f'train.lr must be a finite number > 0, got {t.lr}'),
      (_number(t.weight_decay) and t.weight_decay >= 0, 'train.weight_decay must be a finite number >= 0'),
      (_number(t.momentum) and 0 <= t.momentum < 1, 'train.momentum must be in [0, 1)'),
      (_number(t.poly_power) and t.poly_power >= 0, 'train.poly_power must be >= 0'),
      (t.warmup_steps >= 0, 'train.warmup_steps must be >= 0'),
      (_number(t.grad_clip) and t.grad_clip >= 0, 'train.grad_clip must be >= 0 (0: off)'),
      (t.log_every >= 1, 'train.log_every must be >= 1'),
      (t.checkpoint_every >= 1, 'train.checkpoint_every must be >= 1'),
      (t.max_to_keep >= 1, 'train.max_to_keep must be >= 1'),
      (t.eval_every >= 0, 'train.eval_every must be >= 0 (0: no validation)'),
      (t.optimizer in ('sgd', 'adamw'), "train.optimizer must be 'sgd' or 'adamw'"),
      (e.num_episodes >= 1, 'eval.num_episodes must be >= 1'),
      (e.batch_size >= 1, 'eval.batch_size must be >= 1'),
      (e.val_episodes >= 1 or t.eval_every == 0, 'eval.val_episodes must be >= 1 (or train.eval_every=0)'),
      (config.compute_dtype in ('float32', 'bfloat16'), "compute_dtype must be 'float32' or 'bfloat16'"),
  ]
  from mmtjax.data import pipeline, protocols  # Late: keeps config parsing free of the data stack.
  from mmtjax.models import backbones
  from mmtjax.models import style_memory as sm
  checks += [
      (d.augment in pipeline.AUGMENTS, f'data.augment must be one of {pipeline.AUGMENTS}'),
      (d.get('protocol', 'custom') in protocols.PROTOCOLS, f'data.protocol must be one of {protocols.PROTOCOLS}'),
  ]
  m = config.model
  if m.name == 'mmnet':
    checks += [
        (all(b >= 1 for b in m.bins), 'model.bins must be positive'),
        (m.num_meta_classes >= 1, 'model.num_meta_classes must be >= 1'),
        ({'aux', 'recon'} <= set(config.loss), 'loss needs the fields aux and recon for mmnet'),
    ]
  else:
    mem = config.memory
    checks += [
        (m.memory_stage in backbones.STAGES,
         f'model.memory_stage {m.memory_stage!r} is not a stage of the backbone; choose from {backbones.STAGES}'),
        (all(s in backbones.STAGES for s in m.feature_stages),
         f'model.feature_stages must be stages of the backbone {backbones.STAGES}'),
        (m.memory_stage not in backbones.STAGES or not all(s in backbones.STAGES for s in m.feature_stages) or
         backbones.STAGES.index(m.memory_stage) <= max(backbones.STAGES.index(s) for s in m.feature_stages),
         'model.memory_stage must not lie above every model.feature_stages'),
        (isinstance(mem.num_items, int) and mem.num_items >= 1, 'memory.num_items must be an integer >= 1'),
        (_number(mem.momentum) and 0.0 <= mem.momentum < 1.0, 'memory.momentum must be in [0, 1)'),
        (_number(mem.alpha) and 0.0 <= mem.alpha <= 1.0, 'memory.alpha must be in [0, 1]'),
        (_number(mem.tau) and mem.tau > 0, 'memory.tau must be > 0'),
        (_number(mem.eps) and mem.eps > 0, 'memory.eps must be > 0'),
        (mem.get('similarity', 'centered_cosine') in sm.SIMILARITIES,
         f'memory.similarity must be one of {sm.SIMILARITIES}'),
        (mem.get('assignment', 'batch') in sm.ASSIGNMENTS, f'memory.assignment must be one of {sm.ASSIGNMENTS}'),
        (_number(mem.get('reseed_threshold', 0.0)) and 0 <= mem.get('reseed_threshold', 0.0) < 1,
         'memory.reseed_threshold must be in [0, 1) (0: off)'),
        ({'orth', 'cont'} <= set(config.loss), f'loss needs the fields orth and cont for {m.name}'),
    ]
  checks += [(_number(w) and w >= 0, f'loss.{k} must be a finite number >= 0') for k, w in config.loss.items()]
  for ok, message in checks:
    if not ok:
      raise UserError(f'invalid config: {message}')
