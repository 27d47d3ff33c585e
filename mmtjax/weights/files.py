"""A weights file as users have it -> name -> numpy array, whatever wrote it.

  - PyTorch `.pth` / `.pt` / `.bin` (torch.save: zip or legacy pickle), read by weights.torch_pth
    without PyTorch;
  - `.safetensors` (the Hugging Face hub's and timm's format), read with the `safetensors`
    package's numpy API: a header of names, dtypes and offsets, then raw bytes, so nothing in it
    can execute code;
  - a Hugging Face snapshot folder (the one holding `config.json` and `model.safetensors`).

Which key layout the names follow (Meta's, transformers', timm's) is decided by the keys, never
by the file name: weights.dinov2_layouts.
"""

from __future__ import annotations

import json
import os
import re
import struct

import numpy as np

from mmtjax.weights.torch_pth import WeightsError, load_state_dict

_SAFETENSORS = ('.safetensors',)
_SNAPSHOT_FILES = ('model.safetensors', 'pytorch_model.bin')


def _safetensors(path: str) -> dict[str, np.ndarray]:
  """A .safetensors file, its header checked against the file's size first (a truncated or lying
  file is one line, never a crash)."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise WeightsError(f'{path} is not a safetensors file: {size} bytes, shorter than its header length')
    n = struct.unpack('<Q', head)[0]
    if n > size - 8 or n > 100_000_000:
      raise WeightsError(f'{path} is damaged or incomplete: its header claims {n} bytes, the file has {size}; '
                         f'download it again')
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise WeightsError(f'{path} is damaged: its safetensors header is not JSON ({e})') from e
  end = max((v['data_offsets'][1] for k, v in header.items() if k != '__metadata__' and isinstance(v, dict)
             and 'data_offsets' in v), default=0)
  if 8 + n + end > size:
    raise WeightsError(f'{path} is damaged or incomplete: its tensors need {8 + n + end} bytes, the file has '
                       f'{size}; download it again')
  from safetensors import SafetensorError
  from safetensors.numpy import load_file
  try:
    out = load_file(path)
  except (SafetensorError, ValueError, TypeError, OSError) as e:
    raise WeightsError(f'{path} is not a readable safetensors file ({type(e).__name__}: '
                       f'{" ".join(str(e).split())[:160]}); download it again or check the path') from e
  return {k: np.asarray(v) for k, v in out.items()}


def read(path: str) -> dict[str, np.ndarray]:
  """name -> array of a weights file or a Hugging Face snapshot folder (module docstring)."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    found = [os.path.join(path, f) for f in _SNAPSHOT_FILES if os.path.isfile(os.path.join(path, f))]
    if not found:
      raise WeightsError(f'{path} is a folder without {" or ".join(_SNAPSHOT_FILES)} (a Hugging Face snapshot '
                         f'holds config.json and model.safetensors); give the weights file itself')
    path = found[0]
  if not os.path.isfile(path):
    raise WeightsError(f'weights file {path} does not exist (model.pretrained)')
  if path.lower().endswith(_SAFETENSORS):
    return _safetensors(path)
  with open(path, 'rb') as f:
    head = f.read(8)
  if len(head) == 8 and head[:2] != b'PK' and head[0] != 0x80:  # neither torch's zip nor a pickle
    n = struct.unpack('<Q', head)[0]
    if 0 < n < os.path.getsize(path):  # a safetensors file under another name: its header decides
      try:
        return _safetensors(path)
      except WeightsError:
        pass
  return load_state_dict(path)


def renamed(key: str, table) -> str:
  """`key` under the first (regex, replacement) of `table` that matches it; as it is when none
  does (the layout modules' key maps: an unknown key reaches the loader, which names it)."""
  for pattern, replacement in table:
    new, n = re.subn(pattern, replacement, key)
    if n:
      return new
  return key
