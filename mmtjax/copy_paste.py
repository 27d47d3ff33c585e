"""Pseudo-shots from one labelled support: its object cut by its mask and pasted elsewhere.

One shot leaves nothing to leave out: leave-one-out adaptation and per-episode
block choice (HERA, CVPR 2026: two copy-paste copies of the 1-shot support)
need labelled images that are not the support itself. A copy here is the
support image (flipped with p = 0.5) with the support's object pasted onto it
again: cut by its mask, flipped with p = 0.5, scaled about its centroid by a
log-uniform factor in `scale`, and moved so that its centroid lands on a
uniformly drawn pixel (a whole-pixel shift, so that with scale 1 the pasted
pixels are the support's own values). The copy's mask is the background's
mask (the original object stays where it was, foreground) with the pasted
object's pixels set to foreground; the background's ignored pixels stay
ignored where nothing is pasted.

Every draw comes from the key alone, and the key from the episode alone
(adapt.py: the adaptation seed folded with the episode's `episode_seed`), so
an episode's copies are the same wherever it sits in whichever batch.
HERA's `soft_copy_paste` adds the masked support onto itself at offset 0 (the
instance is as large as the background); the copies here move the object.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mmtjax import ops


class Paste(NamedTuple):
  """One copy's draw: flip the background, flip the object, its scale, its shift (rows, cols)
  in whole pixels (the object's position is s * p + shift, p in pixel-edge coordinates)."""
  flip_background: jax.Array
  flip_object: jax.Array
  scale: jax.Array
  shift: jax.Array


def centroid(fg: jax.Array) -> jax.Array:
  """(row, col) of a [h, w] 0/1 mask's centroid in pixel-edge coordinates (a pixel's centre is
  i + 0.5); the image centre for an empty mask."""
  h, w = fg.shape
  total = fg.sum()
  rows = (fg.sum(1) * (jnp.arange(h) + 0.5)).sum()
  cols = (fg.sum(0) * (jnp.arange(w) + 0.5)).sum()
  centre = jnp.array([h / 2.0, w / 2.0])
  return jnp.where(total > 0, jnp.stack([rows, cols]) / jnp.maximum(total, 1.0), centre)


def draw(key: jax.Array, mask: jax.Array, *, flip: bool = True, scale: tuple[float, float] = (0.8, 1.2)) -> Paste:
  """One copy's random choices for a [h, w] support mask (0 / 1 / 255)."""
  k_bg, k_obj, k_scale, k_where = jax.random.split(key, 4)
  h, w = mask.shape
  flip_bg = jax.random.bernoulli(k_bg) if flip else jnp.array(False)
  flip_obj = jax.random.bernoulli(k_obj) if flip else jnp.array(False)
  lo, hi = scale
  s = jnp.exp(jax.random.uniform(k_scale, minval=jnp.log(lo), maxval=jnp.log(hi)))
  fg = (mask == 1).astype(jnp.float32)
  fg = jnp.where(flip_obj, fg[:, ::-1], fg)
  target = jax.random.uniform(k_where, (2,)) * jnp.array([h, w], jnp.float32)
  shift = jnp.round(target - s * centroid(fg))
  return Paste(flip_bg, flip_obj, s, shift)


def paste(image: jax.Array, mask: jax.Array, p: Paste) -> tuple[jax.Array, jax.Array]:
  """The copy of one support ([h, w, 3], [h, w] in {0, 1, 255}) that `p` describes."""
  background = jnp.where(p.flip_background, image[:, ::-1], image)
  background_mask = jnp.where(p.flip_background, mask[:, ::-1], mask)
  obj = jnp.where(p.flip_object, image[:, ::-1], image)
  fg = jnp.where(p.flip_object, mask[:, ::-1], mask) == 1
  scale = jnp.stack([p.scale, p.scale])

  def warp(x):
    return jax.image.scale_and_translate(x, x.shape, (0, 1), scale, p.shift.astype(jnp.float32), 'linear',
                                         antialias=False)

  pasted = warp(fg.astype(jnp.float32)[..., None])[..., 0] >= 0.5
  out_image = jnp.where(pasted[..., None], warp(obj.astype(jnp.float32)).astype(image.dtype), background)
  out_mask = jnp.where(pasted, 1, background_mask).astype(mask.dtype)
  return out_image, out_mask


def copies(key: jax.Array, image: jax.Array, mask: jax.Array, n: int, *, flip: bool = True,
           scale: tuple[float, float] = (0.8, 1.2)) -> tuple[jax.Array, jax.Array]:
  """n copies ([n, h, w, 3], [n, h, w]) of one support, the i-th from fold_in(key, i)."""
  def one(i):
    return paste(image, mask, draw(jax.random.fold_in(key, i), mask, flip=flip, scale=scale))
  return jax.vmap(one)(jnp.arange(n))


def with_copies(key: jax.Array, images: jax.Array, labels: jax.Array, n: int, **options
                ) -> tuple[jax.Array, jax.Array]:
  """A 1-shot episode's support ([1, h, w, 3], [1, h, w]) followed by its n copies: [1 + n, ...]."""
  extra_images, extra_labels = copies(key, images[0], labels[0], n, **options)
  return (jnp.concatenate([images, extra_images.astype(images.dtype)]),
          jnp.concatenate([labels, extra_labels.astype(labels.dtype)]))


def foreground_iou(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[N] foreground IoU of [N, h, w, 2] logits against [N, H, W] labels (0 / 1 / 255): the logits
  resized to the labels' size, argmax, ignored pixels left out; an episode whose prediction and
  mask are both empty scores 1."""
  size = labels.shape[1:]
  pred = jnp.argmax(ops.resize_features(logits.astype(jnp.float32), size), axis=-1) == 1
  valid = labels != ops.IGNORE_LABEL
  truth = labels == 1
  inter = jnp.sum(pred & truth & valid, axis=(1, 2))
  union = jnp.sum((pred | truth) & valid, axis=(1, 2))
  return jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
