"""Few-shot segmentation metrics: per-class mIoU and FB-IoU (HSNet/PATNet protocol)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mmtjax import ops


def episode_prediction(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Boolean foreground [B, H, W] at `size` from logits [B, h, w, 2] (resized bilinearly, then
  argmax), or from K 1-shot predictions [B, K, h, w, 2] combined by HSNet's vote (`vote`)."""
  logits = logits.astype(jnp.float32)
  if logits.ndim == 5:
    b, k = logits.shape[:2]
    per_shot = ops.resize_features(logits.reshape(b * k, *logits.shape[2:]), size)
    return vote(jnp.argmax(per_shot, axis=-1).reshape(b, k, *size) == 1, jnp)
  return jnp.argmax(ops.resize_features(logits, size), axis=-1) == 1


def episode_counts(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """[B, 4] int32 (fg intersection, fg union, bg intersection, bg union) per episode.

  The prediction (`episode_prediction`) is made at the labels' size [B, H, W];
  255 pixels are ignored.
  """
  pred = episode_prediction(logits, labels.shape[1:3])
  return prediction_counts(pred, labels, jnp).astype(jnp.int32)


def prediction_counts(pred, labels, xp=np):
  """[..., 4] (fg intersection, fg union, bg intersection, bg union) of boolean foreground
  predictions [..., H, W] against labels in {0, 1, 255} (255 ignored); numpy or jax.numpy (xp)."""
  valid = labels != ops.IGNORE_LABEL
  out = []
  for fg in (True, False):
    p, t = (pred == fg) & valid, ((labels == 1) == fg) & valid
    out += [xp.sum(p & t, axis=(-2, -1)), xp.sum(p | t, axis=(-2, -1))]
  return xp.stack(out, axis=-1)


def vote(foreground, xp=np):
  """HSNet's k-shot vote (predict_mask_nshot): boolean foreground [B, K, H, W] of K 1-shot
  predictions -> [B, H, W]. A pixel is foreground when its votes reach half of the episode's
  largest vote count (at least 1): votes / max(max over pixels of votes, 1) >= 0.5."""
  votes = foreground.astype(xp.int32).sum(axis=1)
  top = votes.reshape(votes.shape[0], -1).max(axis=1)
  top = xp.maximum(top, 1).reshape(-1, 1, 1)
  return votes / top >= 0.5


CANVAS_MULTIPLE = 128  # Original-resolution masks are padded to a multiple of this (few compiled shapes).


def original_canvas(masks: Sequence[np.ndarray], multiple: int = CANVAS_MULTIPLE
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Original-resolution masks of different sizes -> one array for the device.

  Returns (canvas [n, C, C] uint8, each mask top-left and 255 elsewhere;
  sizes [n, 2] int32 (H, W)), C = the longest side rounded up to `multiple`.
  """
  longest = max(max(m.shape) for m in masks)
  c = -(-longest // multiple) * multiple
  canvas = np.full((len(masks), c, c), ops.IGNORE_LABEL, np.uint8)
  for out, m in zip(canvas, masks):
    out[:m.shape[0], :m.shape[1]] = m
  return canvas, np.array([m.shape for m in masks], np.int32)


def _align_corners_rows(n_in: int, n_out: jax.Array, canvas: int) -> jax.Array:
  """[B, canvas, n_in] aligned-corners interpolation weights to a traced output length n_out
  [B] (ops.align_corners_matrix for each n_out, zero-padded: rows >= n_out are meaningless)."""
  n_out = n_out.astype(jnp.float32)
  scale = jnp.where(n_out > 1, (n_in - 1) / jnp.maximum(n_out - 1, 1), 0.0)
  src = jnp.arange(canvas, dtype=jnp.float32)[None] * scale[:, None]
  lo = jnp.minimum(jnp.floor(src), n_in - 1)
  hi = jnp.minimum(lo + 1, n_in - 1)
  frac = (src - lo)[..., None]
  taps = jnp.arange(n_in, dtype=jnp.float32)
  return (1 - frac) * (taps == lo[..., None]) + frac * (taps == hi[..., None])


def original_resolution_counts(logit_diff: jax.Array, canvas: jax.Array, sizes: jax.Array) -> jax.Array:
  """PFENet's scoring at the original label resolution, on the device: [B, 4] int32.

  The input was resized to longer side S and padded bottom/right to S x S, so
  the [h, w] output maps onto the original mask padded (with 255) to its
  longer side L: it is resized to L x L with aligned corners (PFENet's
  F.interpolate(..., align_corners=True)), thresholded at 0 (foreground logit
  above background), and compared with the mask, 255 ignored. K 1-shot
  predictions are combined by `vote` over the original H x W pixels.

  Args:
    logit_diff: [B, h, w] foreground minus background logit, or [B, K, h, w].
    canvas, sizes: `original_canvas`'s [B, C, C] masks and [B, 2] (H, W).
  """
  diffs = logit_diff.astype(jnp.float32)
  if diffs.ndim == 3:
    diffs = diffs[:, None]
  b, _, h, w = diffs.shape
  c = canvas.shape[-1]
  longest = jnp.max(sizes, axis=1)
  rows, cols = _align_corners_rows(h, longest, c), _align_corners_rows(w, longest, c)
  up = jnp.einsum('byh,bkhw,bxw->bkyx', rows, diffs, cols, precision=jax.lax.Precision.HIGHEST)
  inside = ((jnp.arange(c)[None, :, None] < sizes[:, 0, None, None])
            & (jnp.arange(c)[None, None, :] < sizes[:, 1, None, None]))
  pred = (up > 0) & inside[:, None]
  pred = vote(pred, jnp) if logit_diff.ndim == 4 else pred[:, 0]
  return prediction_counts(pred, canvas, jnp).astype(jnp.int32)


class SegmentationMeter:
  """Accumulates intersections and unions per class over episodes.

  mIoU = 100 * mean over classes of (sum fg intersection / sum fg union);
  FB-IoU = 100 * mean of the foreground and background IoU accumulated over
  all episodes.
  """

  def __init__(self):
    self.per_class: dict[int, np.ndarray] = {}
    self.total = np.zeros(4, np.int64)
    self.episodes = 0

  def add(self, class_ids: np.ndarray, counts: np.ndarray, valid: np.ndarray) -> None:
    """class_ids [N], counts [N, 4], valid [N] bool (padding is skipped)."""
    for c, n, v in zip(np.asarray(class_ids).ravel(), np.asarray(counts).reshape(-1, 4),
                       np.asarray(valid).ravel()):
      if v:
        self.per_class.setdefault(int(c), np.zeros(4, np.int64))
        self.per_class[int(c)] += n
        self.total += n
        self.episodes += 1

  def merge_processes(self, classes) -> None:
    """Sums the meters of every process (each evaluated its own slice of the episodes).

    Counts travel as two int32 halves (JAX runs without 64-bit types) and
    are reassembled as int64.
    """
    if jax.process_count() == 1:
      return
    classes = sorted(int(c) for c in classes)
    table = np.zeros((len(classes) + 1, 5), np.int64)
    for i, c in enumerate(classes):
      table[i, :4] = self.per_class.get(c, 0)
    table[-1, :4], table[-1, 4] = self.total, self.episodes
    present = np.array([c in self.per_class for c in classes] + [True], np.int32)
    table = merge_process_sums(table)
    present = np.asarray(multihost_utils.process_allgather(present)).max(axis=0)
    self.per_class = {c: table[i, :4] for i, c in enumerate(classes) if present[i]}
    self.total, self.episodes = table[-1, :4], int(table[-1, 4])

  def result(self) -> dict:
    iou = {c: 100.0 * v[0] / max(v[1], 1) for c, v in sorted(self.per_class.items())}
    fg = self.total[0] / max(self.total[1], 1)
    bg = self.total[2] / max(self.total[3], 1)
    return {'miou': float(np.mean(list(iou.values()))) if iou else float('nan'),
            'fb_iou': float(50.0 * (fg + bg)),
            'per_class': {str(c): float(v) for c, v in iou.items()},
            'episodes': self.episodes}


def merge_process_sums(x: np.ndarray) -> np.ndarray:
  """Sum of a non-negative int64 array over every process (itself with one process).

  The values travel as two int32 halves: JAX runs without 64-bit types.
  """
  x = np.asarray(x, np.int64)
  if jax.process_count() == 1:
    return x
  low, high = (x & 0x7FFFFFFF).astype(np.int32), (x >> 31).astype(np.int32)
  low, high = (np.asarray(v) for v in multihost_utils.process_allgather((low, high)))
  return ((high.astype(np.int64) << 31) + low.astype(np.int64)).sum(axis=0)
