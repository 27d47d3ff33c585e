"""Pictures a researcher looks at (PNG, drawn with PIL): the style memory and image styles in
2-D, an episode's supports, query, ground truth and prediction, and per-class IoU bars.

PIL is already a dependency (image decoding); a scatter plot, image panels and
a bar chart need nothing more, so no plotting library is required.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmtjax.data import transforms
from mmtjax.labels import IGNORE_LABEL


def font(size: int):
  """PIL's scalable default font at `size` px (Pillow >= 10.1 with FreeType; its fixed bitmap
  font otherwise)."""
  try:
    return ImageFont.load_default(size=max(10, int(size)))
  except (TypeError, ImportError, OSError):
    return ImageFont.load_default()


def _box(draw: ImageDraw.ImageDraw, xy, text: str, f) -> tuple[float, float, float, float]:
  return draw.textbbox(xy, text, font=f)


def _overlaps(a, b, pad: float = 1.0) -> bool:
  return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


def place_labels(draw: ImageDraw.ImageDraw, points, texts: list[str], f, bounds,
                 taken: list | None = None) -> list[tuple[float, float]]:
  """Top-left corners for `texts` beside `points`, none overlapping another label, a marker
  (a 12 px square around each point) or anything in `taken` and all inside `bounds`
  (x0, y0, x1, y1): beside the point first, then further out along 8 directions (a leader line
  is drawn by the caller when the label moved away)."""
  taken = list(taken or []) + [(x - 6, y - 6, x + 6, y + 6) for x, y in points]
  out = []
  for (x, y), text in zip(points, texts):
    w0, h0 = (lambda b: (b[2] - b[0], b[3] - b[1]))(_box(draw, (0, 0), text, f))
    chosen = None
    for r in range(8, 400, 6):
      for dx, dy in ((1, -1), (1, 0), (-1, -1), (-1, 0), (0, -1), (0, 1), (1, 1), (-1, 1)):
        lx = x + dx * r if dx > 0 else (x - r - w0 if dx < 0 else x - w0 / 2)
        ly = y + dy * r - (h0 if dy < 0 else 0) if dy else y - h0 / 2
        box = _box(draw, (lx, ly), text, f)
        if box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2] or box[3] > bounds[3]:
          continue
        if not any(_overlaps(box, t) for t in taken):
          chosen = (lx, ly, box)
          break
      if chosen:
        break
    if chosen is None:  # nowhere free in the frame: beside the point, as before
      chosen = (x + 8, y - h0, _box(draw, (x + 8, y - h0), text, f))
    taken.append(chosen[2])
    out.append(chosen[:2])
  return out


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
  f = font(max(11, h // 40))
  n, ns = len(items), len(source)
  for x, y in pix[n:n + ns]:
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_SOURCE)
  for x, y in pix[n + ns:]:
    draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_TARGET)
  for x, y in pix[:n]:
    draw.line([x - 6, y - 6, x + 6, y + 6], fill=_ITEM, width=3)
    draw.line([x - 6, y + 6, x + 6, y - 6], fill=_ITEM, width=3)
  draw.line([margin, h - margin + 4, w - margin, h - margin + 4], fill='black')
  draw.line([margin - 4, top, margin - 4, h - margin + 4], fill='black')
  texts = [((w // 2 - 60, h - margin + 8), f'PC 1 ({100 * share[0]:.0f}% of variance)'),
           ((2, top - 14), f'PC 2 ({100 * share[1]:.0f}%)'),
           ((margin, 8), f'{title}: PCA of channel means ({100 * share[0]:.0f}% + {100 * share[1]:.0f}% '
                         'of the source/item variance)')]
  legend = [('x memory items', _ITEM), ('. source images', _SOURCE)]
  if len(groups) == 3:
    legend.append(('. target images', _TARGET))
  x = margin
  for text, _ in legend:
    texts.append(((x, 26), text))
    x = _box(draw, (x, 26), text, f)[2] + 20
  taken = [_box(draw, xy, text, f) for xy, text in texts]
  labels = [str(j) if chosen is None else f'{j} ({int(chosen[j])} target)' for j in range(n)]
  corners = place_labels(draw, [tuple(p) for p in pix[:n]], labels, f, (0, top - 2, w, h - margin + 2), taken)
  for (x, y), (lx, ly), label in zip(pix[:n], corners, labels):
    box = _box(draw, (lx, ly), label, f)
    if not _overlaps(box, (x - 8, y - 8, x + 8, y + 8), pad=4):  # moved away: a leader line to its item
      draw.line([x, y, min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])], fill=_ITEM)
    draw.text((lx, ly), label, fill=_ITEM, font=f)
  for (xy, text), colour in zip(texts, ['black'] * 3 + [c for _, c in legend]):
    draw.text(xy, text, fill=colour, font=f)
  img.save(path, format='PNG')


_TRUTH = (40, 200, 60)
_PRED = (240, 60, 40)
PREDICTION_COLOUR = _PRED
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


def panel_text_size(rows: int, height: int, gap: int = 6) -> int:
  """Text size (px) of an episode panel of `rows` rows of tiles `height` high: at least 2% of the
  picture's height, which is 2 lines (the title, the first row's captions) + rows x (height +
  line + gap) - line + gap, with lines of size + 8."""
  return max(12, int(np.ceil(0.02 * (8 + gap + rows * (height + 8 + gap)) / (1 - 0.02 * (rows + 1)))))


def episode_panel(supports: list[tuple[np.ndarray, np.ndarray]], query: np.ndarray, truth: np.ndarray,
                  predictions: dict[str, np.ndarray] | np.ndarray, title: str, min_height: int = 160,
                  captions: dict[str, str] | None = None) -> Image.Image:
  """One episode: its supports with their masks (in rows no wider than the row below), then
  the query, its ground truth and the prediction of every eval mode side by side.

  supports: [(uint8 image [h, w, 3], mask [h, w] in {0, 1, 255})], each at its own size;
  query: uint8 [H, W, 3]; truth: [H, W] in {0, 1, 255}; predictions: eval mode -> [H, W] bool
  (or one array: 'prediction'); captions: mode -> its tile's caption (default the mode). Every
  tile is shown at the query's height (at least min_height), aspect ratio kept: the query, its
  truth and predictions pixel for pixel when H >= min_height. Text is at least 2% of the
  picture's height.
  """
  if not isinstance(predictions, dict):
    predictions = {'prediction': predictions}
  captions = captions or {}
  height = max(min_height, query.shape[0])

  def sized(a):
    return Image.fromarray(a).resize((max(1, round(a.shape[1] * height / a.shape[0])), height),
                                     Image.NEAREST if a.shape[0] <= height else Image.BILINEAR)

  bottom = [(sized(query), 'query'), (sized(overlay(query, truth, _TRUTH)), 'ground truth')]
  bottom += [(sized(overlay(query, p.astype(np.uint8), _PRED)), captions.get(m, m)) for m, p in predictions.items()]
  shots = [(sized(overlay(im, m, _TRUTH)), f'support {i + 1}') for i, (im, m) in enumerate(supports)]
  limit = sum(t.width + 6 for t, _ in bottom)  # support rows no wider than the query's row (one tile at least)
  rows = []
  for tile in shots:
    if rows and sum(t.width + 6 for t, _ in rows[-1]) + tile[0].width + 6 <= limit:
      rows[-1].append(tile)
    else:
      rows.append([tile])
  rows.append(bottom)
  n, gap = len(rows), 6
  size = panel_text_size(n, height, gap)
  f, line = font(size), size + 8
  total = 2 * line + n * (height + line + gap) - line + gap
  width = max(sum(t.width + gap for t, _ in row) + gap for row in rows)
  img = Image.new('RGB', (width, total), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((gap, 4), title, fill='black', font=f)
  y = 2 * line
  for row in rows:
    x = gap
    for tile, caption in row:
      img.paste(tile, (x, y))
      draw.text((x, y - line + 2), caption, fill='black', font=f)
      x += tile.width + gap
    y += height + line + gap
  return img


_MODE_COLOURS = (_SOURCE, _TARGET, (60, 160, 90), (150, 80, 170), (120, 120, 120), (40, 170, 190))


def class_iou_png(path: str, names: list[str], series: dict[str, list[float]], title: str,
                  means: dict[str, float] | None = None) -> None:
  """Horizontal bars per class (IoU in %), one bar per eval mode (series: mode -> IoUs in class
  order), each mode's mIoU as a vertical line in its colour (its value in the legend), an x axis
  0-100 % with ticks. Every bar's value is written in a column right of the plot, so no line
  crosses a label."""
  modes = list(series)
  means = means or {}
  f = font(13)
  bar = 14
  row = bar * len(modes) + 8
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  name_width = max((probe.textlength(n[:28], font=f) for n in names), default=30)
  left, width = 12 + int(name_width), 400
  top = 34 + 18 * len(modes)
  img = Image.new('RGB', (left + width + 70, top + row * len(names) + 44), 'white')
  draw = ImageDraw.Draw(img)
  draw.text((8, 6), title, fill='black', font=f)
  for k, mode in enumerate(modes):  # the legend, with each mode's mIoU
    colour = _MODE_COLOURS[k % len(_MODE_COLOURS)]
    draw.rectangle([8, 26 + 18 * k, 20, 38 + 18 * k], fill=colour)
    label = f'{mode}' + (f': mIoU {means[mode]:.1f}' if mode in means else '')
    draw.text((26, 25 + 18 * k), label, fill='black', font=f)
  bottom = top + row * len(names)
  for tick in range(0, 101, 20):  # the axis: gridlines and values
    x = left + width * tick / 100
    draw.line([x, top - 2, x, bottom], fill=(225, 225, 225))
    draw.line([x, bottom, x, bottom + 4], fill='black')
    draw.text((x - 8, bottom + 6), f'{tick}', fill='black', font=f)
  draw.line([left, bottom, left + width, bottom], fill='black')
  draw.text((left + width // 2 - 30, bottom + 24), 'IoU (%)', fill='black', font=f)
  for k, mode in enumerate(modes):  # mIoU lines under the bars, inside the plot only
    if mode in means:
      x = left + width * means[mode] / 100
      draw.line([x, top - 4, x, bottom], fill=_MODE_COLOURS[k % len(_MODE_COLOURS)], width=2)
  for i, name in enumerate(names):
    y = top + i * row
    draw.text((6, y + row // 2 - 8), name[:28], fill='black', font=f)
    for k, mode in enumerate(modes):
      iou = series[mode][i]
      yb = y + 4 + k * bar
      draw.rectangle([left, yb, left + width * max(0.0, min(iou, 100.0)) / 100, yb + bar - 3],
                     fill=_MODE_COLOURS[k % len(_MODE_COLOURS)])
      draw.text((left + width + 8, yb - 2), f'{iou:.1f}', fill=_MODE_COLOURS[k % len(_MODE_COLOURS)], font=f)
  img.save(path, format='PNG')
