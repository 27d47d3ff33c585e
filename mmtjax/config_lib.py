"""Config helpers: the compact `file.py:key=value,...` argument and validation."""

from __future__ import annotations

import os

import ml_collections

from mmtjax.errors import UserError, finite_number


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


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError with one line naming the first invalid field, before any work is done."""
  t, d, e = config.train, config.data, config.eval
  checks = [
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
      (finite_number(t.lr) and t.lr > 0, f'train.lr must be a finite number > 0, got {t.lr}'),
      (finite_number(t.weight_decay) and t.weight_decay >= 0, 'train.weight_decay must be a finite number >= 0'),
      (finite_number(t.momentum) and 0 <= t.momentum < 1, 'train.momentum must be in [0, 1)'),
      (finite_number(t.poly_power) and t.poly_power >= 0, 'train.poly_power must be >= 0'),
      (t.warmup_steps >= 0, 'train.warmup_steps must be >= 0'),
      (finite_number(t.grad_clip) and t.grad_clip >= 0, 'train.grad_clip must be >= 0 (0: off)'),
      (t.log_every >= 1, 'train.log_every must be >= 1'),
      (t.checkpoint_every >= 1, 'train.checkpoint_every must be >= 1'),
      (t.max_to_keep >= 1, 'train.max_to_keep must be >= 1'),
      (t.eval_every >= 0, 'train.eval_every must be >= 0 (0: no validation)'),
      (t.get('smoke_steps', 0) >= 0, 'train.smoke_steps must be >= 0 (0: no smoke runs)'),
      (t.get('smoke_episodes', 1) >= 1, 'train.smoke_episodes must be >= 1'),
      (t.optimizer in ('sgd', 'adamw'), "train.optimizer must be 'sgd' or 'adamw'"),
      (e.num_episodes >= 1, 'eval.num_episodes must be >= 1'),
      (e.batch_size >= 1, 'eval.batch_size must be >= 1'),
      (e.get('kshot', 'model') in ('model', 'vote'),
       f"eval.kshot must be 'model' (the method's own k-shot path) or 'vote' (HSNet's), got {e.get('kshot')!r}"),
      (e.val_episodes >= 1 or t.eval_every == 0, 'eval.val_episodes must be >= 1 (or train.eval_every=0)'),
      (config.compute_dtype in ('float32', 'bfloat16'), "compute_dtype must be 'float32' or 'bfloat16'"),
  ]
  from mmtjax import methods  # Late: keeps config parsing free of the model and data stacks.
  from mmtjax.data import datasets, pipeline
  methods.for_config(config)  # An unknown model name: one line naming the known ones.
  checks += [
      (d.augment in pipeline.AUGMENTS, f'data.augment must be one of {pipeline.AUGMENTS}'),
      (d.get('protocol') in (None, *datasets.known_protocols(d)),
       f'data.protocol must be one of {datasets.known_protocols(d)} (or unset: the test dataset\'s own)'),
  ]
  from mmtjax.models import backbones, vit
  backbone = config.model.get('backbone', '')
  if backbones.is_vit(backbone):
    patch = vit.SPECS[backbone].patch
    grid = max(1, round(d.image_size / patch))
    checks.append((grid >= 4, f'data.image_size {d.image_size} gives {backbone} a {grid} x {grid} grid of '
                              f'{patch} px patches; a ViT needs at least 4 x 4: set data.image_size >= {4 * patch}'))
  pretrained = config.model.get('pretrained')
  checks.append((not pretrained or os.path.exists(os.path.expanduser(pretrained)),
                 f'model.pretrained {pretrained} does not exist; give the path of a weights file (DINOv2: '
                 f'github.com/facebookresearch/dinov2, "Pretrained models"; README: Backbones) or of a run'))
  checks += methods.for_config(config).validate(config)
  for name in datasets.names():  # a field only one dataset reads (data.semantic): one line naming it
    datasets.get(name).check_config(d)
  from mmtjax import adapt
  adapt.from_config(config, methods.for_config(config))  # eval.adapt: one line naming the bad field
  checks += [(finite_number(w) and w >= 0, f'loss.{k} must be a finite number >= 0') for k, w in config.get('loss', {}).items()]
  for ok, message in checks:
    if not ok:
      raise UserError(f'invalid config: {message}')
