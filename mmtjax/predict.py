r"""Segmenting a user's own images with a trained model.

  from mmtjax.predict import Predictor
  predictor = Predictor.from_workdir('workdirs/default')      # latest checkpoint (best=True: the best)
  predictor = Predictor.from_config(config)                   # a training-free method (model=prototype)
  out = predictor.segment(query, [support], [support_mask])   # uint8 RGB arrays of any size
  out.mask, out.probability                                   # at the query's own size

  python -m mmtjax.commands.predict --workdir W --support a.jpg:a.png [--support b.jpg:b.png] \
      --query q.jpg --out q_mask.png [--query r.jpg --out r_mask.png]
  python -m mmtjax.commands.predict --config configs/default.py:model=prototype \
      --pretrained ~/weights/dinov2_vits14_pretrain.pth --support a.jpg:a.png --query q.jpg --out q_mask.png

The model and its config come from the checkpoint. Images are resized and
normalised inside, as the config's test protocol does (square resize, or for
'pfenet' the longer side plus padding); the foreground probability is resized
back to each query's size and thresholded at 0.5. One compiled function serves
every call with the same number of queries and supports. Grey and RGBA images
are converted to RGB; a support mask is foreground where it is non-zero (0/1
masks) or >= 128 (0/255 masks).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from mmtjax import adapt, checkpointing, config_lib, methods, parallel
from mmtjax.data import datasets, transforms
from mmtjax.errors import UserError, warn
from mmtjax.models import get_model
from mmtjax.state import create_train_state, untrained_variables


@dataclasses.dataclass
class Prediction:
  mask: np.ndarray  # uint8 [H, W] in {0, 1}, at the query's size
  probability: np.ndarray  # float32 [H, W] foreground probability, at the query's size
  logit: np.ndarray  # float32 [S, S] foreground minus background logit at the model's input size


def _rgb(image: np.ndarray, what: str) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise UserError(f'{what}: expected a uint8 image, got {image.dtype}')
  if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 2, 3, 4)):
    if image.ndim == 3 and image.shape[-1] == 2:  # grey + alpha
      image = image[..., 0]
    return transforms.to_rgb(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  raise UserError(f'{what}: expected an [H, W] or [H, W, 1|3|4] image, got shape {image.shape}')


def _binary(mask: np.ndarray, what: str) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.ndim == 3:
    mask = mask[..., :3].max(axis=-1)
  if mask.ndim != 2:
    raise UserError(f'{what}: expected an [H, W] mask, got shape {mask.shape}')
  fg = mask > 0 if mask.max(initial=0) <= 1 else mask >= 128
  if not fg.any():
    raise UserError(f'{what}: the support mask has no foreground; a support must show the object')
  return fg.astype(np.uint8)


class Predictor:
  """A trained model and the preprocessing of its test protocol."""

  def __init__(self, config: ml_collections.ConfigDict, variables, *, mode: str | None = None,
               adapt_steps: int | None = None):
    """adapt_steps: test-time adaptation on the supports before each prediction (the config's
    eval.adapt settings, or the defaults for a checkpoint saved without them, with this many
    steps; 0: off; None: the config's own)."""
    if adapt_steps is not None:
      config = _with_adapt_steps(config, adapt_steps)
    self.config = config
    self.method = methods.for_config(config)
    self.adaptation = adapt.from_config(config, self.method)
    self.model = get_model(config, axis_name=None)
    modes = dict(self.method.eval_modes)
    mode = mode or next(iter(modes))
    if mode not in modes:
      raise UserError(f'unknown mode {mode!r}; this model has {list(modes)}')
    self.mode_name, self.mode = mode, modes[mode]
    self.variables = jax.device_put(variables, jax.local_devices()[0])
    protocol = datasets.test_protocol(datasets.test_data(config.data), config.eval)
    self.size, self.resize = protocol.image_size, protocol.resize
    self._forward = jax.jit(self._logits)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, mode: str | None = None,
                  adapt_steps: int | None = None) -> Predictor:
    """A training-free method (e.g. `prototype`) built from its config and model.pretrained."""
    if methods.for_config(config).trainable:
      raise UserError(f'model {config.model.name} is trained: load it with Predictor.from_workdir(WORKDIR) '
                      f'(--workdir on the command line)')
    config = copy.deepcopy(config)
    datasets.resolve(config, training=False)
    config_lib.validate(config)
    model = get_model(config, axis_name=None)
    return cls(config, untrained_variables(model, config), mode=mode, adapt_steps=adapt_steps)

  @classmethod
  def from_workdir(cls, workdir: str, *, best: bool = False, step: int | None = None,
                   mode: str | None = None, adapt_steps: int | None = None) -> Predictor:
    """The latest (or `step`, or the best-by-validation) checkpoint of a training workdir."""
    subdir = checkpointing.BEST_SUBDIR if best else checkpointing.SUBDIR
    where = os.path.join(workdir, subdir)
    if not os.path.isdir(where):
      raise checkpointing.CheckpointError(f'no checkpoints in {workdir} (expected {where})')
    ckpts = checkpointing.Checkpoints(workdir, create=False, subdir=subdir)
    try:
      step = ckpts.chosen_step(step)
      config = ml_collections.ConfigDict(ckpts.saved_config(step))
      datasets.resolve(config, training=False)
      template, _ = create_train_state(get_model(config, axis_name=None), config)
      state = ckpts.restore(step, jax.device_get(template))
    finally:
      ckpts.close()
    return cls(config, parallel.eval_variables(state), mode=mode, adapt_steps=adapt_steps)

  def _logits(self, variables, support_images, support_labels, query_images):
    batch = {'support_images': support_images, 'support_labels': support_labels, 'query_images': query_images}

    def logits(v, b):
      return self.method.foreground_logit(self.method.apply(self.model, v, b, train=False, mode=self.mode))

    if self.adaptation is None:
      return logits(variables, batch)
    # Each query is an episode with the given supports; its copies (augmentations) are drawn from seed 0.
    batch['episode_seed'] = jnp.zeros(query_images.shape[:1], jnp.int32)
    return adapt.per_episode(logits, self.method, self.model, variables, batch, mode=self.mode,
                             adaptation=self.adaptation)

  def _prepare(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(normalised [S, S, 3], mask [S, S], (h, w) of the image's content inside the S x S input)."""
    label = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
    if self.resize == 'longer_side_pad':
      image, label = transforms.resize_longer_side(image, label, self.size)
      content = label.shape
      image, label = transforms.pad_to(image, label, self.size)
    else:
      image, label = transforms.resize(image, label, self.size)
      content = (self.size, self.size)
    return transforms.normalize(image), label, content

  def segment_many(self, queries: Sequence[np.ndarray], supports: Sequence[np.ndarray],
                   support_masks: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[Prediction]:
    """Segments every query with the same K supports and masks (numpy uint8 images, any size).
    `names`: what messages call each support (e.g. its file; default 'support k')."""
    if not supports or len(supports) != len(support_masks):
      raise UserError(f'need K >= 1 support images and as many masks, got {len(supports)} and '
                      f'{len(support_masks)}')
    names = list(names) if names is not None else [f'support {k}' for k in range(len(supports))]
    shots_img, shots_lab, full = [], [], []
    for k, (image, mask) in enumerate(zip(supports, support_masks)):
      image, mask = _rgb(image, names[k]), _binary(mask, f'the mask of {names[k]}')
      if mask.all():
        full.append(k)
      if image.shape[:2] != mask.shape:
        from mmtjax.data.builders.raw import same_aspect  # noqa: PLC0415
        if not same_aspect(image.shape[:2], mask.shape):
          raise UserError(f'{names[k]}: image {image.shape[:2]} and mask {mask.shape} differ in size (and in '
                          f'aspect ratio)')
        # The same picture at another scale (Weizmann horses' masks): the image takes the mask's size.
        image = np.asarray(Image.fromarray(image).resize(mask.shape[::-1], Image.BICUBIC))
      im, lab, _ = self._prepare(image, mask)
      shots_img.append(im)
      shots_lab.append(lab)
    if full and len(full) == len(support_masks):
      raise UserError(f'the mask{"s" if len(full) > 1 else ""} of {", ".join(names[k] for k in full)} cover the '
                      f'whole image: the model compares the object with its background, so at least one support '
                      f'must show background (crop a wider view, or add a support that does)')
    for k in full:
      warn(f'the mask of {names[k]} covers the whole image (no background); the other supports give the '
           f'background')
    rgb = [_rgb(q, f'query {i}') for i, q in enumerate(queries)]
    prepared = [self._prepare(q, None) for q in rgb]
    n = len(prepared)
    logits = np.asarray(self._forward(
        self.variables, jnp.asarray(np.broadcast_to(np.stack(shots_img), (n, *np.shape(shots_img)))),
        jnp.asarray(np.broadcast_to(np.stack(shots_lab), (n, *np.shape(shots_lab)))),
        jnp.asarray(np.stack([p[0] for p in prepared]))))
    out = []
    for q, (_, _, (h, w)), logit in zip(rgb, prepared, logits):
      prob = 1.0 / (1.0 + np.exp(-logit[:h, :w].astype(np.float64)))
      full = np.asarray(Image.fromarray(prob.astype(np.float32), 'F').resize((q.shape[1], q.shape[0]),
                                                                            Image.BILINEAR))
      out.append(Prediction((full >= 0.5).astype(np.uint8), full.astype(np.float32), logit.astype(np.float32)))
    return out

  def segment(self, query: np.ndarray, supports: Sequence[np.ndarray],
              support_masks: Sequence[np.ndarray]) -> Prediction:
    """Segments one query image given K support images and their masks."""
    return self.segment_many([query], supports, support_masks)[0]


def _with_adapt_steps(config: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """A copy of `config` with eval.adapt.steps = steps (eval.adapt's defaults when the checkpoint's
  config predates it)."""
  if not isinstance(steps, int) or steps < 0:
    raise UserError(f'adapt steps must be an integer >= 0, got {steps!r}')
  config = copy.deepcopy(config)
  with config.unlocked():
    if 'adapt' not in config.eval:
      config.eval.adapt = adapt.config_section()
    config.eval.adapt.steps = steps
  return config
