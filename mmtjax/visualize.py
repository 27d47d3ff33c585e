"""Pictures a researcher looks at (PNG, drawn with PIL): the style memory and image styles in
2-D, an episode's supports, query, ground truth and prediction, and per-class IoU bars.

PIL is already a dependency (image decoding); a scatter plot, image panels and
a bar chart need nothing more, so no plotting library is required.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mmtjax.data import transforms
from mmtjax.labels import IGNORE_LABEL

_SOURCE = (90, 120, 200)
_TARGET = (230, 120, 30)
_ITEM = (200, 20, 40)


def pca_2d(points: np.ndarray, fit_on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projects points [M, C] on the two principal axes of fit_on [P, C]; returns (xy [M, 2], variance shares [2])."""
  centre = fit_on.mean(axis=0)
  _, s, vt = np.linalg.svd(fit_on - centre, full_matrices=False)
  share = (s ** 2) / max(float(np.sum(s ** 2)), 1e-30)
  axes = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
  share = np.pad(share[:2], (0, max(0, 2 - share[:2].size)))
  return (points - centre) @ axes.T, share


def memory_pca_png(path: str, items: np.ndarray, source: np.ndarray, target: np.ndarray | None = None,
                   title: str = 'style memory', size: tuple[int, int] = (560, 460)) -> None:
  """Scatter of memory items [N, C] (numbered), source [S, C] and target [T, C] image statistics.

  The plane is the PCA of the source statistics and the items, so a bank
  collapsed into one point, or items far from every image, shows at a glance.
  """
  groups = [items, source] + ([target] if target is not None and len(target) else [])
  xy, share = pca_2d(np.concatenate(groups), np.concatenate([items, source]))
  w, h = size
  margin, top = 30, 50
  lo, hi = xy.min(axis=0), xy.max(axis=0)
  span = np.maximum(hi - lo, 1e-12)
  pix = margin + (xy - lo) / span * np.array([w - 2 * margin, h - top - margin])
  pix[:, 1] = h - margin - (pix[:, 1] - margin)  # y up
  img = Image.new('RGB', size, 'white')
  draw = ImageDraw.Draw(img)
  n, ns = len(items), len(source)
  for x, y in pix[n:n + ns]:
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_SOURCE)
  for x, y in pix[n + ns:]:
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_TARGET)
  for j, (x, y) in enumerate(pix[:n]):
    draw.line([x - 6, y - 6, x + 6, y + 6], fill=_ITEM, width=3)
    draw.line([x - 6, y + 6, x + 6, y - 6], fill=_ITEM, width=3)
    draw.text((x + 7, y - 12), str(j), fill=_ITEM)
  draw.text((margin, 8), f'{title}: PCA of channel means ({100 * share[0]:.0f}% + {100 * share[1]:.0f}% '
            'of the source/item variance)', fill='black')
  legend = [('x memory items', _ITEM), ('. source images', _SOURCE)]
  if len(groups) == 3:
    legend.append(('. target images', _TARGET))
  x = margin
  for text, colour in legend:
    draw.text((x, 26), text, fill=colour)
    x += 8 * len(text) + 20
  img.save(path, format='PNG')


_TRUTH = (40, 200, 60)
_PRED = (240, 60, 40)
_IGNORE = (120, 120, 120)


def display_image(normalised: np.ndarray) -> np.ndarray:
  """A normalised model input [H, W, 3] back to uint8 RGB."""
  image = normalised * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN
  return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray, colour, alpha: float = 0.5) -> np.ndarray:
  """uint8 image with mask == 1 tinted in `colour` and ignore (255) pixels greyed."""
  out = image.astype(np.float32)
  for where, c in ((mask == 1, colour), (mask == IGNORE_LABEL, _IGNORE)):
    out[where] = (1 - alpha) * out[where] + alpha * np.asarray(c, np.float32)
  return np.round(out).astype(np.uint8)


def episode_panel(supports: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray, truth: np.ndarray,
                  prediction: np.ndarray, title: str, tile: int = 160) -> Image.Image:
  """One episode in a row: each support with its mask, the query, the ground truth, the prediction.

  supports: [(uint8 image [H, W, 3], mask [H, W] in {0, 1, 255})]; query:
  uint8 [H, W, 3]; truth: [H, W] in {0, 1, 255}; prediction: [H, W] bool.
  """
  tiles = [(overlay(im, m, _TRUTH), f'support {i + 1}') for i, (im, m) in enumerate(supports)]
  tiles += [(query, 'query'), (overlay(query, truth, _TRUTH), 'ground truth'),
            (overlay(query, prediction.astype(np.uint8), _PRED), 'prediction')]
  top, gap = 36, 6
  img = Image.new('RGB', (len(tiles) * (tile + gap) + gap, tile + top + gap), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((gap, 4), title, fill='black')
  for k, (array, caption) in enumerate(tiles):
    x = gap + k * (tile + gap)
    img.paste(Image.fromarray(array).resize((tile, tile), Image.NEAREST), (x, top))
    draw.text((x, top - 14), caption, fill='black')
  return img


def class_iou_png(path: str, names: list[str], ious: list[float], title: str, mean: float | None = None) -> None:
  """Horizontal bars, one per class (IoU in %), with the mean as a vertical line."""
  row, left, width, top = 16, 8 + 7 * min(max((len(n) for n in names), default=4), 28), 360, 30
  img = Image.new('RGB', (left + width + 60, top + row * len(names) + 12), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((8, 8), title, fill='black')
  for i, (name, iou) in enumerate(zip(names, ious)):
    y = top + i * row
    draw.text((8, y + 2), name[:28], fill='black')
    draw.rectangle([left, y + 2, left + width * max(0.0, min(iou, 100.0)) / 100, y + row - 2], fill=_SOURCE)
    draw.text((left + width + 6, y + 2), f'{iou:.1f}', fill='black')
  if mean is not None:
    x = left + width * mean / 100
    draw.line([x, top - 4, x, top + row * len(names)], fill=_ITEM, width=2)
  img.save(path, format='PNG')
