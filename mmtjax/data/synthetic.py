"""The embedded cross-domain dataset: textured shapes in two image styles.

Every class is a texture (a pattern drawn in two colours); each image holds
one to three objects of distinct classes with random blob shapes on a
background, and a label map with the class id of every pixel (0 background,
255 a one-pixel boundary band, as in PASCAL VOC).

- source domain: 20 classes (4 folds of 5) drawn in one of five styles
  (SOURCE_STYLES), as real source sets mix many: clean (full contrast), cool
  and bright (a blue cast, lifted blacks), dark and contrasty (low key,
  stretched contrast), soft (Gaussian blur, slightly desaturated) and grey
  (mostly desaturated, with mild noise). Each image's style is drawn from its
  own generator, so shapes and classes do not depend on it;
- target domain: 6 other classes (other patterns and colours) in a style
  that is none of those: washed-out contrast, a warm colour cast, grainy
  textured backgrounds and sensor noise, which shifts the channel statistics
  of every feature map.

Everything is a pure function of (seed, split, index), so the dataset is
identical on every machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmtjax.errors import UserError

SOURCE_CLASSES = tuple(range(1, 21))
TARGET_CLASSES = tuple(range(21, 27))
NUM_FOLDS = 4

_PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
], np.float32) / 255.0
_SOURCE_PATTERNS = ('stripes', 'dots', 'checker', 'diagonal')
SOURCE_STYLES = ('clean', 'cool_bright', 'dark_contrast', 'soft', 'grey')
_TARGET_PATTERNS = ('rings', 'hatch', 'waves')
# Names of ids 1..26 for tables and pictures: a class's pattern and its number among that pattern's
# classes (source: stripes1..stripes5, dots1.., checker1.., diagonal1..; target: rings1, hatch1, waves1, ...).
CLASS_NAMES = tuple(f'{_SOURCE_PATTERNS[i % 4]}{i // 4 + 1}' for i in range(len(SOURCE_CLASSES))) + tuple(
    f'{_TARGET_PATTERNS[i % 3]}{i // 3 + 1}' for i in range(len(TARGET_CLASSES)))


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  domain: str
  num_images: int
  classes: tuple[int, ...]


SPLITS = {
    'source_train': SplitSpec('source', 1200, SOURCE_CLASSES),
    'source_test': SplitSpec('source', 400, SOURCE_CLASSES),
    'target_test': SplitSpec('target', 480, TARGET_CLASSES),
}


def fold_classes(fold: int) -> tuple[int, ...]:
  """The 5 novel classes of a source fold (PASCAL-5i style: fold i = 5i+1..5i+5)."""
  if not 0 <= fold < NUM_FOLDS:
    raise UserError(f'fold must be in 0..{NUM_FOLDS - 1}, got {fold}')
  return SOURCE_CLASSES[5 * fold:5 * fold + 5]


def _class_appearance(cls: int) -> tuple[str, np.ndarray, np.ndarray, float]:
  """(pattern, colour a, colour b, period in pixels) of a class id."""
  if cls in SOURCE_CLASSES:
    i = cls - 1
    pattern = _SOURCE_PATTERNS[i % 4]
    a, b = _PALETTE[i % 10], _PALETTE[(i // 4 + 3 * (i % 4) + 5) % 10] * 0.35
    return pattern, a, b, 6.0 + 2.0 * (i % 3)
  i = cls - TARGET_CLASSES[0]
  pattern = _TARGET_PATTERNS[i % 3]
  a = _PALETTE[(2 * i + 1) % 10] * 0.6 + 0.4 * _PALETTE[(2 * i + 4) % 10]
  b = 1.0 - a
  return pattern, a, b, 7.0 + 3.0 * (i // 3)


def _texture(pattern: str, period: float, yy: np.ndarray, xx: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
  """A [H, W] texture in [0, 1] with a random phase."""
  ph = rng.uniform(0, 2 * np.pi, 2)
  w = 2 * np.pi / period
  if pattern == 'stripes':
    t = np.sin(w * yy + ph[0])
  elif pattern == 'dots':
    t = np.sin(w * yy + ph[0]) * np.sin(w * xx + ph[1])
  elif pattern == 'checker':
    t = np.sign(np.sin(w * yy + ph[0]) * np.sin(w * xx + ph[1]))
  elif pattern == 'diagonal':
    t = np.sin(w * (xx + yy) / np.sqrt(2) + ph[0])
  elif pattern == 'rings':
    cy, cx = rng.uniform(0, yy.shape[0], 2)
    t = np.sin(w * np.hypot(yy - cy, xx - cx) + ph[0])
  elif pattern == 'hatch':
    t = np.maximum(np.sin(w * (xx - yy) + ph[0]), np.sin(w * (xx + yy) + ph[1]))
  elif pattern == 'waves':
    t = np.sin(w * yy + 2.5 * np.sin(w * xx / 2 + ph[1]) + ph[0])
  else:
    raise ValueError(pattern)
  return 0.5 + 0.5 * t


def _blob(size: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """A random star-shaped blob mask [H, W] bool."""
  radius = rng.uniform(0.14, 0.3) * size
  cy, cx = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
  theta = np.arctan2(yy - cy, xx - cx)
  r = np.ones_like(theta)
  for k in (2, 3, 5):
    r += rng.uniform(-0.18, 0.18) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
  return np.hypot(yy - cy, xx - cx) <= radius * r


def _smooth_noise(size: int, rng: np.random.Generator, cells: int) -> np.ndarray:
  """Bilinearly upsampled random grid: [size, size] in [0, 1]."""
  grid = rng.uniform(0, 1, (cells + 1, cells + 1))
  pos = np.linspace(0, cells, size, endpoint=False)
  i = pos.astype(int)
  f = pos - i
  rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
  return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _boundary(label: np.ndarray) -> np.ndarray:
  """Pixels whose 4-neighbourhood holds another label."""
  edge = np.zeros(label.shape, bool)
  edge[1:] |= label[1:] != label[:-1]
  edge[:-1] |= label[1:] != label[:-1]
  edge[:, 1:] |= label[:, 1:] != label[:, :-1]
  edge[:, :-1] |= label[:, 1:] != label[:, :-1]
  return edge


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of [H, W, 3] with edge padding."""
  radius = max(1, int(round(3 * sigma)))
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  k /= k.sum()
  pad = np.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode='edge')
  rows = sum(w * pad[i:i + image.shape[0]] for i, w in enumerate(k))
  return sum(w * rows[:, i:i + image.shape[1]] for i, w in enumerate(k))


def _apply_style(image: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
  """Image [H, W, 3] in ~[0, 1] rendered in a named style (SOURCE_STYLES or 'target')."""
  size = image.shape[0]
  grey = image.mean(axis=-1, keepdims=True)
  if style == 'clean':
    return image + rng.normal(0, 0.02, image.shape)
  if style == 'cool_bright':
    cast = np.array([0.8, 0.95, 1.15]) * rng.uniform(0.95, 1.05, 3)
    return (0.75 * image + 0.25) * cast + rng.normal(0, 0.02, image.shape)
  if style == 'dark_contrast':
    return 1.5 * (image - 0.5) + 0.3 + rng.normal(0, 0.02, image.shape)
  if style == 'soft':
    image = 0.6 * image + 0.4 * grey
    return _blur(image, 1.2 * size / 96) + rng.normal(0, 0.01, image.shape)
  if style == 'grey':
    return 0.85 * grey + 0.15 * image + rng.normal(0, 0.04, image.shape)
  if style != 'target':
    raise ValueError(f'unknown style {style!r}')
  # Target style: washed-out contrast, warm colour cast, grain and sensor noise.
  cast = np.array([1.15, 0.95, 0.6]) * rng.uniform(0.9, 1.1, 3)
  grain = _smooth_noise(size, rng, size // 3)[..., None] - 0.5
  image = 0.45 * image + 0.35
  image = image * cast + 0.18 * grain
  return image + rng.normal(0, 0.06, image.shape)


def image_style(split: str, index: int, *, seed: int = 0) -> str:
  """The style of an image: drawn from a generator of its own (target: always 'target')."""
  if SPLITS[split].domain != 'source':
    return 'target'
  rng = np.random.default_rng([seed, list(SPLITS).index(split), index, 1])
  return SOURCE_STYLES[int(rng.integers(len(SOURCE_STYLES)))]


def generate_example(split: str, index: int, *, seed: int = 0, size: int = 96
                     ) -> tuple[np.ndarray, np.ndarray]:
  """One (image [size, size, 3] uint8, label [size, size] uint8) of a split."""
  spec = SPLITS[split]
  rng = np.random.default_rng([seed, list(SPLITS).index(split), index])
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  if spec.domain == 'source':
    c0, c1 = rng.uniform(0.3, 0.8, (2, 3))
    t = _smooth_noise(size, rng, 2)[..., None]
    image = c0 * (1 - t) + c1 * t
  else:
    base = rng.uniform(0.2, 0.7, 3)
    image = base + 0.5 * (_smooth_noise(size, rng, size // 6)[..., None] - 0.5)
  label = np.zeros((size, size), np.uint8)
  num_objects = rng.integers(1, 4)
  for cls in rng.choice(spec.classes, num_objects, replace=False):
    mask = _blob(size, rng, yy, xx)
    pattern, a, b, period = _class_appearance(int(cls))
    t = _texture(pattern, period * size / 96, yy, xx, rng)[..., None]
    image = np.where(mask[..., None], a * t + b * (1 - t), image)
    label[mask] = cls
  image = _apply_style(image, image_style(split, index, seed=seed), rng)
  label[_boundary(label)] = 255
  return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8), label
