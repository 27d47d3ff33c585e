"""A frozen backbone's features, computed once per distinct image.

A method whose backbone does not change (a frozen foundation ViT in training;
any backbone in evaluation) runs the same forward pass on the same image again
and again: every training step that draws an image it drew before, every
evaluation episode that reuses a support, every training seed and every
method that shares the backbone. `FeatureCache` keeps the stage outputs of
the frozen part (up to the method's `feature_stop`) per image, keyed by the
image's bytes and the backbone's weights, computes only the images it has not
seen (one compiled shape), and hands the step a `features` entry that the
model reads instead of running its backbone. Augmentations that repeat (a
square resize with a horizontal flip) hit; ones that never repeat (random
scale and rotation) miss every time and are better left uncached.

The numbers equal the uncached path up to float rounding (the same ops,
compiled in two programs instead of one): tests/test_feature_cache.py.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from typing import Any

import jax
import numpy as np

_BACKBONE = 'encoder'  # the backbone's module name in every model
# The model fields that build its backbone (models.backbones.get_backbone).
_BUILD_FIELDS = ('backbone', 'stem', 'output_stride', 'attention', 'vit_blocks', 'vit_norm', 'dtype')


def backbone_variables(variables: dict) -> dict:
  """The backbone's part of a model's (host, unreplicated) variables."""
  return {col: {_BACKBONE: tree[_BACKBONE]} for col, tree in variables.items()
          if isinstance(tree, dict) and _BACKBONE in tree}


def _fingerprint(tree) -> bytes:
  h = hashlib.blake2b(digest_size=16)
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((a.shape, a.dtype)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.digest()


def image_key(image: np.ndarray) -> bytes:
  """A key of one image's exact bytes (its shape and dtype included)."""
  a = np.ascontiguousarray(image)
  h = hashlib.blake2b(str((a.shape, a.dtype)).encode(), digest_size=16)
  h.update(a.tobytes())
  return h.digest()


class _Store:
  """Least-recently-used entries (backbone, stop, image) -> {stage: array}, up to max_bytes."""

  def __init__(self):
    self.entries: collections.OrderedDict[tuple, dict[str, np.ndarray]] = collections.OrderedDict()
    self.bytes = 0
    self.lock = threading.Lock()

  def get(self, key):
    with self.lock:
      value = self.entries.get(key)
      if value is not None:
        self.entries.move_to_end(key)
      return value

  def put(self, key, value: dict[str, np.ndarray], max_bytes: int) -> None:
    size = sum(v.nbytes for v in value.values())
    with self.lock:
      if key in self.entries:
        return
      self.entries[key] = value
      self.bytes += size
      while self.bytes > max_bytes and self.entries:
        _, old = self.entries.popitem(last=False)
        self.bytes -= sum(v.nbytes for v in old.values())

  def clear(self) -> None:
    with self.lock:
      self.entries.clear()
      self.bytes = 0


# model.cache_features_mb (also where a run's stored config predates the field): a 224 px
# ViT-S/14 image up to block 10 takes 1.6 MB; 0 turns the cache off.
DEFAULT_MB = 4096

# One store per process: methods and runs that share a backbone's weights share its features.
STORE = _Store()


class FeatureCache:
  """The features of `model`'s backbone up to stage `stop`, once per distinct image.

  model: a model with `backbone_features(images, stop)` (MMT, PrototypeMatcher,
    MMNet). variables: its host variables (only the backbone's are kept).
  max_bytes: the process-wide store's limit (least recently used first out).
  """

  def __init__(self, model, variables: dict, stop: str, max_bytes: int):
    self.stop = stop
    self.max_bytes = max_bytes
    self._variables = jax.device_put(backbone_variables(variables), jax.local_devices()[0])
    # What the outputs depend on: the backbone's weights and build, and where it stops.
    build = tuple(str(getattr(model, f, None)) for f in _BUILD_FIELDS)
    self._id = (_fingerprint(self._variables), build, stop)
    self._fn = jax.jit(lambda v, x: model.apply(v, x, stop, method='backbone_features'))
    self.hits = self.misses = 0

  def features(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """images [N, H, W, 3] -> {stage: [N, ...]} (the backbone's outputs up to `stop`)."""
    images = np.asarray(images)
    keys = [(self._id, image_key(x)) for x in images]
    found = [STORE.get(k) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]
    self.hits += len(keys) - len(missing)
    self.misses += len(missing)
    if missing:
      # The misses padded to a quarter of the batch or to all of it: two compiled shapes (the first
      # steps miss most images, later ones a few).
      quarter = max(1, -(-len(images) // 4))
      size = quarter if len(missing) <= quarter else len(images)
      chosen = images[missing + [missing[0]] * (size - len(missing))]
      out = jax.device_get(self._fn(self._variables, chosen))
      for j, i in enumerate(missing):
        found[i] = {name: np.array(v[j]) for name, v in out.items()}
        STORE.put(keys[i], found[i], self.max_bytes)
    return {name: np.stack([f[name] for f in found]) for name in found[0]}

  def attach(self, batch: dict[str, Any]) -> dict[str, Any]:
    """A host batch [devices, per_device, ...] with 'features': per device, the features of its
    B*K supports (episode-major) then its B queries, the order the models concatenate them."""
    si, qi = np.asarray(batch['support_images']), np.asarray(batch['query_images'])
    d, b, k = si.shape[:3]
    images = np.concatenate([si.reshape(d, b * k, *si.shape[3:]), qi], axis=1)
    feats = self.features(images.reshape(d * (b * k + b), *images.shape[2:]))
    return {**batch, 'features': {n: v.reshape(d, b * k + b, *v.shape[1:]) for n, v in feats.items()}}

  def stats(self) -> str:
    total = self.hits + self.misses
    return (f'features of {self.misses} of {total} images computed, {self.hits} reused '
            f'({STORE.bytes / 2**20:.0f} MiB cached)' if total else 'no image seen')


def for_run(method, model, host_variables, config, *, training: bool) -> FeatureCache | None:
  """The cache a run uses, or None: the method names no fixed stop (method.feature_stop: the
  backbone trains, or in training uses batch statistics) or model.cache_features_mb is 0.
  host_variables: the model's variables, one copy on the host (parallel.unreplicate)."""
  stop = method.feature_stop(config, training=training)
  mb = config.model.get('cache_features_mb', DEFAULT_MB) or 0
  if stop is None or mb <= 0:
    return None
  return FeatureCache(model, host_variables, stop, int(mb) * 2**20)
