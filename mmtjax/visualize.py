"""Pictures a researcher looks at: the style memory and image styles in 2-D (PNG, drawn with PIL).

PIL is already a dependency (image decoding); a scatter plot needs nothing more.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

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
