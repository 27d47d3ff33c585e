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
                   title: str = 'style memory', size: tuple[int, int] = (560, 460),
                   chosen: np.ndarray | None = None) -> None:
  """Scatter of memory items [N, C] (numbered), source [S, C] and target [T, C] image statistics.

  The plane is the PCA of the source statistics and the items, so a bank
  collapsed into one point, or items far from every image, shows at a glance.
  chosen [N]: how many target images picked each item (the eval's histogram),
  written beside the item's number; the axes are labelled with their share.
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
    label = str(j) if chosen is None else f'{j} ({int(chosen[j])} target)'
    draw.text((x + 7, y - 12), label, fill=_ITEM)
  draw.line([margin, h - margin + 4, w - margin, h - margin + 4], fill='black')
  draw.line([margin - 4, top, margin - 4, h - margin + 4], fill='black')
  draw.text((w // 2 - 60, h - margin + 8), f'PC 1 ({100 * share[0]:.0f}% of variance)', fill='black')
  draw.text((2, top - 14), f'PC 2 ({100 * share[1]:.0f}%)', fill='black')
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


def overlay(image: np.ndarray, mask: np.ndarray, colour, alpha: float = 0.45) -> np.ndarray:
  """uint8 image with mask == 1 tinted in `colour`, its outline drawn solid (readable on any
  image and at any size), and ignore (255) pixels greyed."""
  out = image.astype(np.float32)
  for where, c in ((mask == 1, colour), (mask == IGNORE_LABEL, _IGNORE)):
    out[where] = (1 - alpha) * out[where] + alpha * np.asarray(c, np.float32)
  fg = np.pad(mask == 1, 1)
  inner = fg[1:-1, 1:-1] & fg[:-2, 1:-1] & fg[2:, 1:-1] & fg[1:-1, :-2] & fg[1:-1, 2:]
  edge = (mask == 1) & ~inner
  if max(mask.shape) >= 200:  # two pixels wide on large images
    e = np.pad(edge, 1)
    edge = e[1:-1, 1:-1] | e[:-2, 1:-1] | e[2:, 1:-1] | e[1:-1, :-2] | e[1:-1, 2:]
  out[edge] = np.asarray(colour, np.float32)
  return np.round(out).astype(np.uint8)


def episode_panel(supports: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray, truth: np.ndarray,
                  prediction: np.ndarray, title: str, min_height: int = 160) -> Image.Image:
  """One episode in a row: each support with its mask, the query, the ground truth, the prediction.

  supports: [(uint8 image [h, w, 3], mask [h, w] in {0, 1, 255})], each at its own size;
  query: uint8 [H, W, 3]; truth: [H, W] in {0, 1, 255}; prediction: [H, W] bool. Every tile
  is shown at the query's height (at least min_height), aspect ratio kept: the query, its
  truth and prediction pixel for pixel when H >= min_height.
  """
  tiles = [(overlay(im, m, _TRUTH), f'support {i + 1}') for i, (im, m) in enumerate(supports)]
  tiles += [(query, 'query'), (overlay(query, truth, _TRUTH), 'ground truth'),
            (overlay(query, prediction.astype(np.uint8), _PRED), 'prediction')]
  height = max(min_height, query.shape[0])
  sized = [(Image.fromarray(a).resize((max(1, round(a.shape[1] * height / a.shape[0])), height),
                                      Image.NEAREST if a.shape[0] <= height else Image.BILINEAR), c)
           for a, c in tiles]
  top, gap = 36, 6
  img = Image.new('RGB', (sum(t.width + gap for t, _ in sized) + gap, height + top + gap), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((gap, 4), title, fill='black')
  x = gap
  for tile, caption in sized:
    img.paste(tile, (x, top))
    draw.text((x, top - 14), caption, fill='black')
    x += tile.width + gap
  return img


_MODE_COLOURS = (_SOURCE, _TARGET, (60, 160, 90), (150, 80, 170), (120, 120, 120), (40, 170, 190))


def class_iou_png(path: str, names: list[str], series: dict[str, list[float]], title: str,
                  means: dict[str, float] | None = None) -> None:
  """Horizontal bars per class (IoU in %), one bar per eval mode (series: mode -> IoUs in
  class order), each mode's mIoU as a vertical line in its colour (the value in the legend), an x axis 0-100 % with ticks."""
  modes = list(series)
  means = means or {}
  bar = 12
  row = bar * len(modes) + 6
  left, width, top = 8 + 7 * min(max((len(n) for n in names), default=4), 28), 400, 34 + 14 * len(modes)
  img = Image.new('RGB', (left + width + 60, top + row * len(names) + 36), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((8, 6), title, fill='black')
  for k, mode in enumerate(modes):  # the legend, with each mode's mIoU
    colour = _MODE_COLOURS[k % len(_MODE_COLOURS)]
    draw.rectangle([8, 24 + 14 * k, 18, 34 + 14 * k], fill=colour)
    label = f'{mode}' + (f': mIoU {means[mode]:.1f}' if mode in means else '')
    draw.text((24, 23 + 14 * k), label, fill='black')
  bottom = top + row * len(names)
  for tick in range(0, 101, 20):  # the axis: gridlines and values
    x = left + width * tick / 100
    draw.line([x, top - 2, x, bottom], fill=(225, 225, 225))
    draw.line([x, bottom, x, bottom + 4], fill='black')
    draw.text((x - 8, bottom + 6), f'{tick}', fill='black')
  draw.line([left, bottom, left + width, bottom], fill='black')
  draw.text((left + width // 2 - 30, bottom + 20), 'IoU (%)', fill='black')
  for i, name in enumerate(names):
    y = top + i * row
    draw.text((8, y + row // 2 - 6), name[:28], fill='black')
    for k, mode in enumerate(modes):
      iou = series[mode][i]
      yb = y + 3 + k * bar
      draw.rectangle([left, yb, left + width * max(0.0, min(iou, 100.0)) / 100, yb + bar - 2],
                     fill=_MODE_COLOURS[k % len(_MODE_COLOURS)])
      draw.text((left + width * max(0.0, min(iou, 100.0)) / 100 + 4, yb - 1), f'{iou:.1f}', fill='black')
  for k, mode in enumerate(modes):
    if mode in means:
      x = left + width * means[mode] / 100
      colour = _MODE_COLOURS[k % len(_MODE_COLOURS)]
      draw.line([x, top - 4, x, bottom], fill=colour, width=2)  # its value is in the legend
  img.save(path, format='PNG')
