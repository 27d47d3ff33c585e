"""Reads PyTorch .pth/.pt state dicts into numpy arrays, without PyTorch.

Both on-disk formats are supported:
- the zip format (torch >= 1.6): `<prefix>/data.pkl` plus one raw
  little-endian file per storage, `<prefix>/data/<key>`;
- the legacy format (torch < 1.6, e.g. PSPNet's resnet50_v2.pth): a magic
  number, protocol and system-info pickles, the object pickle, the list of
  storage keys, then each storage as an int64 element count and its bytes.
Every pickle in either format (the legacy header pickles and storage-key list
included) goes through one restricted unpickler that resolves only the few
globals a state dict needs (tensor and parameter rebuilds, storage types,
OrderedDict); any other global is refused before it is looked up, so reading a
file never runs code from it. Plain containers (dict, list, tuple, str,
numbers) need no global and load as usual.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from mmtjax.errors import UserError

_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': ml_dtypes.bfloat16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class WeightsError(UserError):
  """A weights file that cannot be read or does not fit the model."""


class _StorageType:
  def __init__(self, name: str):
    if name not in DTYPES:
      raise pickle.UnpicklingError(f'unsupported storage type torch.{name}')
    self.dtype = np.dtype(DTYPES[name])


class _Storage:
  """A flat typed buffer; legacy storages are filled after the object pickle is read."""

  def __init__(self, dtype: np.dtype, numel: int, data: np.ndarray | None = None):
    self.dtype, self.numel, self.data = dtype, numel, data


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_):
  if not (isinstance(storage, _Storage) and isinstance(offset, int) and _is_int_tuple(size)
          and _is_int_tuple(stride) and len(size) == len(stride)):
    raise pickle.UnpicklingError('malformed tensor record')
  return _Tensor(storage, offset, tuple(size), tuple(stride))


def _is_int_tuple(x) -> bool:
  return isinstance(x, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in x)


class _Tensor:
  """Deferred view into a storage (legacy storages are read after the pickle)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def numpy(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise WeightsError('a tensor refers to a storage the file does not contain')
    if not self.size:
      return np.array(data[self.offset])
    needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
    if needed > data.size:
      raise WeightsError(f'a tensor of shape {self.size} needs {needed} elements; its storage has '
                         f'{data.size} (truncated file?)')
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(data[self.offset:], self.size,
                                           [s * itemsize for s in self.stride])
    return np.array(view)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_):
  del requires_grad, backward_hooks
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """The only unpickler this module uses: globals from _ALLOWED and torch storage types only.

  load_storage: resolves persistent ids ('storage', type, key, location, numel, ...);
  None for the pickles that hold no tensors (legacy header, storage keys).
  """

  def __init__(self, file, load_storage=None):
    super().__init__(file)
    self._load_storage = load_storage

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    raise pickle.UnpicklingError(f'unsupported object in a state dict: {module}.{name}')

  def persistent_load(self, pid):
    if (self._load_storage is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != 'storage'
        or not isinstance(pid[1], _StorageType) or not isinstance(pid[2], str)
        or not isinstance(pid[4], int) or pid[4] < 0):
      raise pickle.UnpicklingError(f'unsupported persistent id {pid!r:.80}')
    return self._load_storage(*pid[1:])


def _safe_load(f, load_storage=None) -> Any:
  return _Unpickler(f, load_storage).load()


def _resolve(obj: Any) -> Any:
  if isinstance(obj, _Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = next((n for n in names if n.endswith('/data.pkl') or n == 'data.pkl'), None)
    if pkl is None:
      raise WeightsError(f'{path}: zip file without data.pkl, not a PyTorch checkpoint')
    prefix = pkl[:-len('data.pkl')]
    storages: dict[str, _Storage] = {}

    def load_storage(storage_type, key, location, numel, *_):
      del location
      if key not in storages:
        raw = z.read(f'{prefix}data/{key}')
        dtype = storage_type.dtype
        storages[key] = _Storage(dtype, numel, np.frombuffer(raw, dtype)[:numel] if numel else
                                 np.frombuffer(raw, dtype))
      return storages[key]

    return _resolve(_safe_load(io.BytesIO(z.read(pkl)), load_storage))


def _load_legacy(path: str) -> Any:
  with open(path, 'rb') as f:
    # Even the header goes through the restricted unpickler: a file that is a
    # bare pickle is refused here, before anything in it is called.
    if _safe_load(f) != _LEGACY_MAGIC:
      raise WeightsError(f'{path}: not a PyTorch checkpoint (bad magic number)')
    _safe_load(f)  # protocol version
    _safe_load(f)  # system info
    storages: dict[str, _Storage] = {}
    views = []

    def load_storage(storage_type, key, location, numel, view_metadata=None):
      del location
      if key not in storages:
        storages[key] = _Storage(storage_type.dtype, numel)
      if view_metadata is not None:
        _, offset, size = view_metadata
        view = _Storage(storage_type.dtype, size)
        views.append((view, storages[key], offset))
        return view
      return storages[key]

    obj = _safe_load(f, load_storage)
    keys = _safe_load(f)
    if not isinstance(keys, list) or any(k not in storages for k in keys):
      raise WeightsError(f'{path}: malformed storage key list')
    for key in keys:
      storage = storages[key]
      (numel,) = struct.unpack('<q', f.read(8))
      raw = f.read(numel * storage.dtype.itemsize)
      if len(raw) != numel * storage.dtype.itemsize:
        raise WeightsError(f'{path}: truncated storage {key}')
      storage.data = np.frombuffer(raw, storage.dtype)
    for view, root, offset in views:
      view.data = root.data[offset:offset + view.numel]
  return _resolve(obj)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array of a PyTorch checkpoint; unwraps {'state_dict': ...} and 'module.'."""
  if not os.path.isfile(path):
    raise WeightsError(f'weights file {path} does not exist (model.pretrained)')
  with open(path, 'rb') as f:
    head = f.read(4)
  if head == b'PK\x03\x04' and not zipfile.is_zipfile(path):  # torch.save's zip, without its directory
    raise WeightsError(f'{path} is damaged or incomplete: it starts as the zip archive torch.save writes but '
                       f'its end is missing (an interrupted download or copy?); download it again')
  try:
    obj = _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
  except WeightsError:
    raise
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, IndexError,
          struct.error, zipfile.BadZipFile, OverflowError, MemoryError) as e:
    detail = ' '.join(str(e).split())[:200]
    raise WeightsError(f'{path} is not a readable PyTorch state dict: damaged, incomplete or another kind of file '
                       f'({type(e).__name__}: {detail}); download it again or check the path') from e
  if isinstance(obj, dict) and 'state_dict' in obj and isinstance(obj['state_dict'], dict):
    obj = obj['state_dict']
  if not isinstance(obj, dict):
    raise WeightsError(f'{path} holds a {type(obj).__name__}, not a state dict')
  return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in obj.items()
          if isinstance(v, np.ndarray)}
