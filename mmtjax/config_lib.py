"""Config helpers: the compact `file.py:key=value,...` argument and validation."""

from __future__ import annotations

import ml_collections

from mmtjax.models import MODELS


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'key=value,key=value' against typed defaults; unknown keys are errors."""
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    if '=' not in item:
      raise ValueError(f'config arg {item!r} is not key=value (known keys: {sorted(defaults)})')
    key, value = item.split('=', 1)
    if key not in defaults:
      raise ValueError(f'unknown config arg {key!r}; known keys: {sorted(defaults)}')
    kind = type(defaults[key])
    try:
      out[key] = (value.lower() in ('1', 'true', 'yes')) if kind is bool else kind(value)
    except ValueError:
      raise ValueError(f'config arg {key}={value!r} is not a valid {kind.__name__}') from None
  return ml_collections.ConfigDict(out)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one line naming the first invalid field."""
  checks = [
      (config.model.name in MODELS, f'model.name must be one of {MODELS}'),
      (config.data.shot >= 1, 'data.shot must be >= 1'),
      (-1 <= config.data.fold <= 3, 'data.fold must be -1 (all classes) or 0..3'),
      (config.data.image_size >= 16, 'data.image_size must be >= 16'),
      (config.train.batch_size >= 1, 'train.batch_size must be >= 1'),
      (config.train.num_steps >= 1 or config.train.get('epochs', 0) > 0,
       'train.num_steps must be >= 1 (or set train.epochs)'),
      (config.compute_dtype in ('float32', 'bfloat16'), "compute_dtype must be 'float32' or 'bfloat16'"),
  ]
  from mmtjax.data import pipeline, protocols  # Late: keeps config parsing free of the data stack.
  checks += [
      (config.data.augment in pipeline.AUGMENTS, f'data.augment must be one of {pipeline.AUGMENTS}'),
      (config.data.get('protocol', 'custom') in protocols.PROTOCOLS,
       f'data.protocol must be one of {protocols.PROTOCOLS}'),
  ]
  if config.model.name == 'mmnet':
    checks += [
        (all(b >= 1 for b in config.model.bins), 'model.bins must be positive'),
        (config.model.num_meta_classes >= 1, 'model.num_meta_classes must be >= 1'),
        ({'aux', 'recon'} <= set(config.loss), 'loss needs the fields aux and recon for mmnet'),
    ]
  else:
    checks += [
        (0.0 <= config.memory.momentum <= 1.0, 'memory.momentum must be in [0, 1]'),
        (0.0 <= config.memory.alpha <= 1.0, 'memory.alpha must be in [0, 1]'),
        (config.memory.tau > 0, 'memory.tau must be > 0'),
        (config.memory.num_items >= 1, 'memory.num_items must be >= 1'),
        ({'orth', 'cont'} <= set(config.loss), f'loss needs the fields orth and cont for {config.model.name}'),
    ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f'invalid config: {message}')
