"""Host-side checks of episode inputs, run before anything is traced or compiled."""

from __future__ import annotations

import numpy as np

from mmtjax.errors import UserError

_LABEL_VALUES = (0, 1, 255)


def check_inputs(support_images, support_labels, query_images, query_labels=None) -> None:
  """Raises ValueError naming the first problem of an episode batch.

  Expected: support_images [..., K, H, W, 3], support_labels [..., K, H, W],
  query_images [..., H, W, 3], query_labels [..., H, W]; finite images; labels
  in {0, 1, 255}; every support mask with at least one foreground pixel.
  """
  si, sl, qi = np.asarray(support_images), np.asarray(support_labels), np.asarray(query_images)
  if si.ndim < 5 or si.shape[-1] != 3:
    raise UserError(f'support_images must be [..., K, H, W, 3], got {si.shape}')
  if sl.shape != si.shape[:-1]:
    raise UserError(f'support_labels shape {sl.shape} does not match support_images {si.shape[:-1]}')
  if qi.shape[:-3] != si.shape[:-4] or qi.shape[-3:] != si.shape[-3:]:
    raise UserError(f'query_images shape {qi.shape} does not match support_images {si.shape} '
                     '(same batch and image size expected)')
  labels = [('support_labels', sl)]
  if query_labels is not None:
    ql = np.asarray(query_labels)
    if ql.shape != qi.shape[:-1]:
      raise UserError(f'query_labels shape {ql.shape} does not match query_images {qi.shape[:-1]}')
    labels.append(('query_labels', ql))
  for name, lab in labels:
    bad = np.setdiff1d(np.unique(lab), _LABEL_VALUES)
    if bad.size:
      raise UserError(f'{name} hold values {bad[:5].tolist()} outside {{0, 1, 255}}')
  for name, im in (('support_images', si), ('query_images', qi)):
    if not np.all(np.isfinite(im)):
      raise UserError(f'{name} contain NaN or Inf')
  empty = np.argwhere(~np.any(sl == 1, axis=(-2, -1)))
  if empty.size:
    raise UserError(f'support mask at index {tuple(empty[0].tolist())} has no foreground pixel')
