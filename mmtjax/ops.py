"""Array operations shared by the models, all on NHWC arrays.

Every function here is pure and jit-safe; shapes are given in the docstrings.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmtjax.labels import IGNORE_LABEL  # noqa: F401 - re-exported: ops.IGNORE_LABEL


def channel_stats(x: jax.Array, eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
  """Per-image channel mean and standard deviation over H and W.

  Args:
    x: [B, H, W, C] features.
    eps: added to the variance before the square root, so the std is never
      zero and its gradient is finite for constant channels.

  Returns:
    (mean [B, C], std [B, C]) with std = sqrt(mean_hw (x - mean)^2 + eps).
  """
  mean = jnp.mean(x, axis=(1, 2))
  var = jnp.mean(jnp.square(x - mean[:, None, None, :]), axis=(1, 2))
  return mean, jnp.sqrt(var + eps)


def masked_average_pool(feats: jax.Array, mask: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Masked average pooling (the prototype of a masked region).

  The caller resizes the mask to the feature size (see `resize_mask`); a mask
  of another spatial size is an error, not a silent resize.

  Args:
    feats: [B, H, W, C] features.
    mask: [B, H, W] non-negative weights (soft masks allowed).
    eps: floor of the mask area; an all-zero mask gives a zero prototype.

  Returns:
    [B, C] prototypes sum_hw(f * m) / max(sum_hw m, eps).
  """
  if feats.shape[:3] != mask.shape:
    raise ValueError(
        f'masked_average_pool: mask shape {mask.shape} does not match features {feats.shape[:3]}')
  mask = mask.astype(feats.dtype)
  total = jnp.einsum('bhwc,bhw->bc', feats, mask)
  area = jnp.sum(mask, axis=(1, 2))
  return total / jnp.maximum(area, eps)[:, None]


def resize_mask(mask: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Resizes a float mask [B, H, W] to [B, h, w] bilinearly (area-weighted when shrinking)."""
  return jax.image.resize(mask, (mask.shape[0], *size), method='linear', antialias=True)


def resize_features(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of [B, H, W, C] features or logits to [B, h, w, C]."""
  if x.shape[1:3] == tuple(size):
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), method='linear')


def binary_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Splits a {0, 1, 255} label map into (foreground, valid) float masks."""
  valid = labels != IGNORE_LABEL
  fg = jnp.logical_and(labels == 1, valid)
  return fg.astype(jnp.float32), valid.astype(jnp.float32)


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """x / max(||x||, eps) along `axis`; the zero vector stays zero."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
  """Cosine similarity of every row of a [N, C] with every row of b [M, C] -> [N, M]."""
  return l2_normalize(a) @ l2_normalize(b).T


def cosine_map(feats: jax.Array, protos: jax.Array, scale: float = 1.0) -> jax.Array:
  """Scaled-cosine segmentation map (PANet-style).

  Args:
    feats: [B, H, W, C] query features.
    protos: [B, P, C] prototypes per episode (e.g. P=2: background, foreground).
    scale: multiplier of the cosine (PANet uses 20).

  Returns:
    [B, H, W, P] logits scale * cos(feats[b, h, w], protos[b, p]).
  """
  return scale * jnp.einsum('bhwc,bpc->bhwp', l2_normalize(feats), l2_normalize(protos))


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] linear-interpolation weights with aligned corners (PyTorch align_corners=True)."""
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  src = np.arange(n_out) * scale
  lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(m, (np.arange(n_out), hi), frac)
  return m


def resize_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Bilinear resize of [B, H, W, C] (or [B, H, W]) with aligned corners.

  The corner pixels of input and output coincide (PyTorch's
  F.interpolate(..., mode='bilinear', align_corners=True), which PFENet and
  MM-Net use for masks, priors, pyramid bins and the output upsampling).
  An output size of 1 takes the top-left pixel, as PyTorch does.
  """
  if x.shape[1:3] == tuple(size):
    return x
  rows = jnp.asarray(align_corners_matrix(x.shape[1], size[0]), x.dtype)
  cols = jnp.asarray(align_corners_matrix(x.shape[2], size[1]), x.dtype)
  if x.ndim == 3:
    return jnp.einsum('ih,bhw,jw->bij', rows, x, cols)
  return jnp.einsum('ih,bhwc,jw->bijc', rows, x, cols)
