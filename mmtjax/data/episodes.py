"""Episode sampling: every episode is a pure function of (seed, step, index).

An episode is (class id, query example, K distinct support examples), all of
whose masks hold the class with at least `min_pixels` pixels, support never
equal to the query. Resuming at a step therefore replays the same episodes,
and every host draws the same global list.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mmtjax.errors import UserError

# Distinct stream for test lists so they never coincide with training episodes.
_TEST_STREAM = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Episode:
  class_id: int
  query: int
  supports: tuple[int, ...]


def build_class_index(classes: Iterable[np.ndarray], areas: Iterable[np.ndarray],
                      min_pixels: int) -> dict[int, np.ndarray]:
  """class id -> sorted example indices whose mask holds >= min_pixels of it."""
  index: dict[int, list[int]] = {}
  for i, (cls, area) in enumerate(zip(classes, areas)):
    for c, a in zip(np.asarray(cls).tolist(), np.asarray(area).tolist()):
      if a >= min_pixels:
        index.setdefault(int(c), []).append(i)
  return {c: np.asarray(v, np.int64) for c, v in sorted(index.items())}


def cached_class_index(source, cache_dir: str, split: str, min_pixels: int
                       ) -> dict[int, np.ndarray]:
  """The class index of a tfds data source, built once and kept as JSON beside the data."""
  path = os.path.join(cache_dir, f'class_index-{split}-min{min_pixels}.json')
  if os.path.exists(path):
    with open(path) as f:
      return {int(c): np.asarray(v, np.int64) for c, v in json.load(f).items()}
  records = [source[i] for i in range(len(source))]
  index = build_class_index((r['classes'] for r in records), (r['areas'] for r in records),
                            min_pixels)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump({str(c): v.tolist() for c, v in index.items()}, f)
  os.replace(tmp, path)
  return index


class EpisodeSampler:
  """Draws episodes of `shot` supports for `classes` from a class index."""

  def __init__(self, index: Mapping[int, np.ndarray], classes: Sequence[int], shot: int,
               seed: int):
    if shot < 1:
      raise UserError(f'shot must be >= 1, got {shot}')
    self.shot, self.seed = shot, seed
    usable = []
    for c in classes:
      n = len(index.get(c, ()))
      if n < shot + 1:
        logging.warning('class %d has %d images (< shot + 1 = %d): excluded from episodes',
                        c, n, shot + 1)
      else:
        usable.append(c)
    if not usable:
      raise UserError(f'no class among {list(classes)} has {shot + 1} images for {shot}-shot episodes')
    self.classes = tuple(usable)
    self.index = {c: np.asarray(index[c]) for c in self.classes}

  def episode(self, step: int, i: int) -> Episode:
    """The i-th episode of a step; identical for identical (seed, step, i)."""
    rng = np.random.default_rng([self.seed, step, i])
    return self._draw(self.classes[rng.integers(len(self.classes))], rng)

  def test_list(self, num_episodes: int | None, order: str = 'random') -> list[Episode]:
    """A fixed, seeded list of test episodes.

    order 'random': class and images drawn per episode. 'round_robin': the
    class of episode i is classes[i % C] (SUIM). 'each_query': every indexed
    image is the query once, with its class (FSS-1000); num_episodes None
    means all of them.
    """
    if order == 'random':
      return [self.episode(_TEST_STREAM, i) for i in range(num_episodes)]
    if order == 'round_robin':
      return [self._draw(self.classes[i % len(self.classes)], np.random.default_rng(
          [self.seed, _TEST_STREAM, i])) for i in range(num_episodes)]
    if order == 'each_query':
      pairs = [(c, int(q)) for c in self.classes for q in self.index[c]]
      pairs = pairs if num_episodes is None else pairs[:num_episodes]
      out = []
      for i, (c, q) in enumerate(pairs):
        rng = np.random.default_rng([self.seed, _TEST_STREAM, i])
        others = self.index[c][self.index[c] != q]
        out.append(Episode(c, q, tuple(int(s) for s in rng.choice(others, self.shot, replace=False))))
      return out
    raise ValueError(f"order must be 'random', 'round_robin' or 'each_query', got {order!r}")

  def _draw(self, c: int, rng: np.random.Generator) -> Episode:
    chosen = rng.choice(self.index[c], self.shot + 1, replace=False)
    return Episode(int(c), int(chosen[0]), tuple(int(s) for s in chosen[1:]))
