"""From episodes to device batches: decode and augment in worker threads, prefetch.

Host batches are dicts of numpy arrays with a leading [devices, per_device]
shape:
  support_images [D, b, K, S, S, 3] float32, support_labels [D, b, K, S, S] uint8,
  query_images [D, b, S, S, 3] float32, query_labels [D, b, S, S] uint8,
  class_id [D, b] int32, valid [D, b] bool (False for padding episodes).
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from mmtjax import metrics
from mmtjax.data import transforms
from mmtjax.data.episode_checks import check_inputs
from mmtjax.data.episodes import Episode, EpisodeSampler
from mmtjax.errors import UserError

AUGMENTS = ('none', 'flip', 'mmnet')
RESIZES = ('square', 'longer_side_pad')


# data.augment values whose transform also brings the image to the episode size
# (PFENet / MM-Net: scale, rotate, blur, flip, crop with padding).
_SIZING_AUGMENTS = {'mmnet': transforms.augment_mmnet}


class EpisodeLoader:
  """Turns episodes into arrays, reading records from a random-access source.

  augment: 'none'; 'flip' (square resize, horizontal flip p .5); 'mmnet'
    (PFENet/MM-Net: scale, rotate, blur, flip, crop to image_size).
  resize (without augmentation): 'square' (HSNet/PATNet: image_size x
    image_size) or 'longer_side_pad' (PFENet: longer side image_size, padded
    bottom/right; the query's original-resolution mask is then returned too,
    for scoring at the original resolution).
  Records hold 'image' and 'label' bytes; a record with 'binary' True has a
  {0, 1, 255} label for its single class instead of class ids.
  """

  def __init__(self, source, *, image_size: int, augment: str | bool, seed: int,
               num_workers: int = 4, resize: str = 'square'):
    augment = {True: 'flip', False: 'none'}.get(augment, augment)
    if augment not in AUGMENTS:
      raise UserError(f'augment must be one of {AUGMENTS}, got {augment!r}')
    if resize not in RESIZES:
      raise UserError(f'resize must be one of {RESIZES}, got {resize!r}')
    self.source = source
    self.image_size = image_size
    self.augment = augment
    self.resize = resize
    self.seed = seed
    self.pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))

  def _example(self, index: int, class_id: int, rng: np.random.Generator | None):
    """(normalised image, episode mask, original-resolution mask or None)."""
    record = self.source[index]
    image = transforms.to_rgb(transforms.decode_image(record['image'], f'image of example {index}'))
    label = transforms.decode_image(record['label'], f'label of example {index}')
    mask = transforms.class_mask(label, 1 if record.get('binary', False) else class_id)
    size, original = self.image_size, None
    if self.augment in _SIZING_AUGMENTS:  # Augmentations that crop to the size themselves.
      augmented = _SIZING_AUGMENTS[self.augment](image, mask, rng, size)
      if np.any(mask == 1) and not np.any(augmented[1] == 1):  # scaled / rotated away: plain resize
        augmented = transforms.resize(image, mask, size)
      image, mask = augmented
    elif self.resize == 'longer_side_pad':
      original = mask
      image, mask = transforms.pad_to(*transforms.resize_longer_side(image, mask, size), size)
    else:
      image, mask = transforms.resize(image, mask, size)
      if self.augment == 'flip' and rng.random() < 0.5:
        image, mask = transforms.hflip(image, mask)
    return transforms.normalize(image), np.ascontiguousarray(mask), original

  def image(self, index: int) -> np.ndarray:
    """Example `index`'s image alone, resized and normalised as in an evaluation episode."""
    return self._example(index, 0, None)[0]

  def load(self, episode: Episode, key: Sequence[int]) -> dict[str, np.ndarray]:
    """One episode; `key` seeds its augmentation (ignored without augmentation)."""
    rng = np.random.default_rng([self.seed, *key, 1]) if self.augment != 'none' else None
    shots = [self._example(s, episode.class_id, rng) for s in episode.supports]
    for index, (_, mask, _) in zip(episode.supports, shots):
      if not np.any(mask == 1):
        name = self.source[index].get('name', index)
        name = name.decode() if isinstance(name, bytes) else name
        raise UserError(f'support image {name} has no pixel of class {episode.class_id} at {self.image_size} px '
                        f'(resize {self.resize!r}): the class counts in it at the original size but vanishes '
                        f'when resized; raise data.min_pixels (or data.image_size) so that only classes that stay '
                        f'visible count')
    q_image, q_label, q_original = self._example(episode.query, episode.class_id, rng)
    out = {
        'support_images': np.stack([s[0] for s in shots]),
        'support_labels': np.stack([s[1] for s in shots]),
        'query_images': q_image,
        'query_labels': q_label,
        'class_id': np.int32(episode.class_id),
        'valid': np.bool_(True),
        'episode_seed': episode_seed(episode),
    }
    if q_original is not None:
      out['original_labels'] = q_original
    return out

  def batch(self, episodes: Sequence[Episode], keys: Sequence[Sequence[int]],
            shape: tuple[int, int], num_valid: int | None = None) -> dict[str, np.ndarray]:
    """Stacks episodes into a [devices, per_device, ...] batch, padding with invalid copies.

    Episodes from index `num_valid` on (default: none) are marked invalid too.
    """
    total = shape[0] * shape[1]
    if len(episodes) > total:
      raise ValueError(f'{len(episodes)} episodes do not fit a batch of {total}')
    items = list(self.pool.map(self.load, episodes, keys))
    if num_valid is not None:
      for item in items[num_valid:]:
        item['valid'] = np.bool_(False)
    while len(items) < total:
      items.append({**items[0], 'valid': np.bool_(False)})
    # Original-resolution masks differ in size: padded onto one canvas (metrics.original_canvas).
    originals = [it.pop('original_labels') for it in items] if 'original_labels' in items[0] else None
    batch = {k: np.stack([it[k] for it in items]).reshape(*shape, *np.shape(items[0][k]))
             for k in items[0]}
    check_inputs(batch['support_images'], batch['support_labels'], batch['query_images'],
                 batch['query_labels'])
    if originals is not None:
      canvas, sizes = metrics.original_canvas(originals)
      batch['original_labels'] = canvas.reshape(*shape, *canvas.shape[1:])
      batch['original_sizes'] = sizes.reshape(*shape, 2)
    return batch


def episode_seed(episode: Episode) -> np.int32:
  """A seed that depends on the episode alone (its class, query and supports), not on its
  position in a list or a batch: test-time adaptation draws its augmentations from it."""
  ident = f'{episode.class_id}:{episode.query}:{",".join(map(str, episode.supports))}'
  return np.int32(zlib.crc32(ident.encode()) & 0x7FFFFFFF)


def train_batches(loader: EpisodeLoader, sampler: EpisodeSampler, *, start_step: int,
                  num_steps: int, shape: tuple[int, int], offset: int = 0
                  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
  """(step, batch) for steps start_step..num_steps-1.

  The global batch of a step is episodes 0..G-1 of that step; this host takes
  the `shape[0] * shape[1]` of them starting at `offset` (multi-host slices).
  """
  n = shape[0] * shape[1]
  for step in range(start_step, num_steps):
    ids = range(offset, offset + n)
    episodes = [sampler.episode(step, i) for i in ids]
    yield step, loader.batch(episodes, [(step, i) for i in ids], shape)


def eval_batches(loader: EpisodeLoader, episodes: Sequence[Episode], shape: tuple[int, int],
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """The fixed episode list in padded batches (padding has valid=False).

  With several processes, each global batch of process_count x local
  episodes is split into per-process slices: every process takes part in
  every step (the eval step is one SPMD program) and scores only its slice.
  """
  n = shape[0] * shape[1]
  for start in range(0, len(episodes), n * process_count):
    first = start + process_index * n
    chunk = list(episodes[first:first + n])
    valid = len(chunk)
    if not chunk:  # This process has nothing left in the last global batch: pure padding.
      chunk, valid = [episodes[start]], 0
    yield loader.batch(chunk, [(-1, first + i) for i in range(len(chunk))], shape, num_valid=valid)


def prefetch(iterator: Iterator, put: Callable, size: int = 2) -> Iterator:
  """Runs `iterator` in a thread, applies `put` (host-to-device copy), keeps `size` ready.

  Exceptions raised by the producer are re-raised in the consumer.
  """
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in iterator:
        if stop.is_set():
          return
        q.put(put(item))
    except BaseException as e:  # Handed to the consumer.
      q.put(e)
    q.put(done)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
