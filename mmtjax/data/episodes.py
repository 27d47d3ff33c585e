"""Episodes: mmtjax's sampler, the anchors' test episodes, and episode lists as files.

mmtjax's sampler: every episode is a pure function of (seed, step, index): a
class, a query and K distinct supports whose masks hold the class with at
least `min_pixels` pixels. Resuming at a step replays the same episodes, and
every host draws the same global list. It draws the training episodes and the
test episodes of protocols 'custom' and 'uniform'.

Protocol 'hsnet' replays HSNet's and PATNet's own test episodes
(mmtjax.data.anchors). A test list can be written as a file, one JSON object a
line, `{"index", "class", "class_name", "query", "supports"}` with the records'
ids (the original file names without extension); its SHA-256 goes into every
evaluation report:

  python -m mmtjax.commands.episodes --dataset fss1000 --protocol hsnet --shot 1 \
      --manual_dir ~/data/FSS-1000 --data_dir ~/tensorflow_datasets --out fss_1shot.jsonl
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from mmtjax.errors import UserError, warn

# A class counts in an image from this many pixels (configs/default.py's data.min_pixels; the
# episodes command's default, so its lists equal the evaluation's when no flag is given).
MIN_PIXELS = 48

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


def cached_class_index(source, cache_dir: str, split: str, min_pixels: int, size: int | None = None
                       ) -> dict[int, np.ndarray]:
  """The class index of a tfds data source, built once and kept as JSON beside the data.

  With `size`, a class counts in an image only if it also keeps at least one
  pixel when the mask is resized to size x size (nearest, as the episode
  loader resizes): small classes that hold `min_pixels` at the original size
  can vanish at the size the model sees, and a support mask must not be empty.
  """
  suffix = f'-{size}px' if size else ''
  path = os.path.join(cache_dir, f'class_index-{split}-min{min_pixels}{suffix}.json')
  if os.path.exists(path):
    with open(path) as f:
      return {int(c): np.asarray(v, np.int64) for c, v in json.load(f).items()}
  records = [source[i] for i in range(len(source))]
  areas = [r['areas'] for r in records]
  if size:
    areas = [_areas_at(r, size, min_pixels) for r in records]
  index = build_class_index((r['classes'] for r in records), areas, min_pixels)
  if size:
    full = build_class_index((r['classes'] for r in records), (r['areas'] for r in records), min_pixels)
    lost = [(c, i) for c, v in full.items() for i in sorted(set(v.tolist()) - set(index.get(c, ()).tolist()))]
    if lost:
      c, i = lost[0]
      name = records[i].get('name', i)
      name = name.decode() if isinstance(name, bytes) else name
      warn(f'{split}: {len(lost)} class occurrences with >= {min_pixels} pixels vanish when the mask is resized '
           f'to {size} px (data.image_size) and do not count (first: class {c} in {name})')
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump({str(c): v.tolist() for c, v in index.items()}, f)
  os.replace(tmp, path)
  return index


def _areas_at(record, size: int, min_pixels: int) -> np.ndarray:
  """The record's class areas, zeroed where the class holds >= min_pixels but no pixel of the
  size x size resized mask."""
  from mmtjax.data import transforms
  areas = np.array(record['areas'], np.int64)
  classes = np.asarray(record['classes'])
  if not np.any(areas >= min_pixels):
    return areas
  label = transforms.decode_image(record['label'], 'a label')
  small = np.asarray(transforms.resize_label(label, size))
  values = [1] * len(classes) if record.get('binary', False) else classes.tolist()
  for j, v in enumerate(values):
    if areas[j] >= min_pixels and not np.any(small == v):
      areas[j] = 0
  return areas


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


# The anchors' test episodes (protocol 'hsnet') -------------------------------------------------

def cached_ids(source, cache_dir: str, split: str) -> list[str]:
  """The records' ids (original file names without extension), read once and kept beside the data."""
  path = os.path.join(cache_dir, f'ids-{split}.json')
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  ids = [source[i]['id'].decode() for i in range(len(source))]
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(ids, f)
  os.replace(tmp, path)
  return ids


def anchor_episodes(split, data, shot: int, num_episodes: int | None, seed: int = 0) -> list[Episode]:
  """HSNet's / PATNet's test episodes (anchors.py) for `split`, as record indices. `split`:
  a SplitData (its builder lists them: builder.anchor_episodes); `data`: the config's data section seen
  by the test split."""
  dataset = split.dataset
  ids = cached_ids(split.source, split.cache_dir, split.name)
  by_class: dict[int, list[str]] = {}
  record: dict[tuple[int, str], int] = {}
  record_of_id: dict[str, int] = {}
  for c in split.all_index:
    for i in split.all_index[c]:
      by_class.setdefault(c, []).append(ids[i])
      record[(c, ids[i])] = int(i)
  for i, name in enumerate(ids):
    record_of_id.setdefault(name, i)
  named = split.builder.anchor_episodes(split, data, by_class, shot, num_episodes, seed)
  absent = [n for _, q, sup in named for n in (q, *sup) if n not in record_of_id]
  if absent:
    raise UserError(f'{dataset}: the episode list names {len(set(absent))} images absent from the built data '
                    f'(first: {absent[0]}); is the download complete?')
  return [Episode(c, record.get((c, q), record_of_id[q]), tuple(record.get((c, s), record_of_id[s]) for s in sup))
          for c, q, sup in named]


def episode_lines(episodes: Sequence[Episode], split) -> list[dict]:
  """The JSON objects of an episode list, with record ids (or indices when the records have none)."""
  ids = split.ids() if split.has_ids else None
  name = (lambda i: ids[i]) if ids else str
  return [{'index': k, 'class': e.class_id, 'class_name': split.class_name(e.class_id), 'query': name(e.query),
           'supports': [name(s) for s in e.supports]} for k, e in enumerate(episodes)]


def list_text(lines: Sequence[dict]) -> str:
  return ''.join(json.dumps(line, sort_keys=True) + '\n' for line in lines)


def list_sha256(lines: Sequence[dict]) -> str:
  """The SHA-256 of the list as written by --out: two reports with the same hash saw the same episodes."""
  return hashlib.sha256(list_text(lines).encode()).hexdigest()


class ShotCountError(UserError):
  """A test class has too few images for the shot count (a sweep leaves that cell out)."""


def protocol_episodes(split, data, protocol, shot: int) -> list[Episode]:
  """The test episodes of a protocol (protocols.Protocol) on a split."""
  if protocol.order == 'anchors':
    return anchor_episodes(split, data, shot, protocol.num_episodes, protocol.seed)
  counts = {c: len(split.index.get(c, ())) for c in split.classes}
  # The shot count must not drop a class from a test set (one image only: never usable, the sampler warns).
  small = {c: n for c, n in counts.items() if 2 <= n < shot + 1}
  if small:
    c, n = min(small.items(), key=lambda kv: kv[1])
    fits = min(n for n in counts.values() if n >= 2) - 1
    raise ShotCountError(f'{shot}-shot episodes need {shot + 1} images of each test class; {len(small)} of '
                    f'{len(split.classes)} classes of {split.dataset}/{split.name} have fewer (class '
                    f'{split.class_name(c)}: {n}); the largest shot count every class allows is {fits}')
  sampler = EpisodeSampler(split.index, split.classes, shot, seed=protocol.seed)
  return sampler.test_list(protocol.num_episodes, protocol.order)

