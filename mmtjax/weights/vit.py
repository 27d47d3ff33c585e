"""Meta's DINOv2 / DINOv3 state dicts -> the Flax variables of models.vit.VisionTransformer.

The Flax tree keeps the official module names, so a variable's torch key is
its path with 'blocks_i' written 'blocks.i' and kernel/scale written weight;
Linear weights [out, in] become Dense kernels [in, out], the patch embedding's
Conv2d weight [out, in, kh, kw] a kernel [kh, kw, in, out]. DINOv3's
LinearKMaskedBias is folded: the qkv bias times its bias_mask (the k third is
zero). Read but unused: mask_token (masked-image training only),
local_cls_norm (DINOv3's training-time norm of local crops) and
rope_embed.periods, which must equal the periods the model computes. DINOv2
checkpoints saved with block chunks ('blocks.<chunk>.<i>.') are read too.
Every variable receives exactly one tensor of its shape; anything else is a
WeightsError naming the first offending tensor.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from mmtjax.models import vit
from mmtjax.weights.torch_pth import WeightsError

_IGNORED = re.compile(r'^(mask_token|local_cls_norm\.(weight|bias)|rope_embed\.periods)$|\.bias_mask$')
_CHUNKED = re.compile(r'^blocks\.\d+\.(\d+)\.')


def _torch_key(keys: list[str]) -> str:
  names = [re.sub(r'^blocks_(\d+)$', r'blocks.\1', k) for k in keys]
  names[-1] = {'kernel': 'weight', 'scale': 'weight'}.get(names[-1], names[-1])
  return '.'.join(names)


def vit_from_torch(state_dict: dict[str, np.ndarray], template: dict, spec: vit.ViTSpec) -> dict:
  """Fills a ViT's {'params': ...} template from one of Meta's state dicts."""
  state_dict = {_CHUNKED.sub(r'blocks.\1.', k): v for k, v in state_dict.items()}
  if spec.family == 'dinov3' and 'rope_embed.periods' in state_dict:
    periods = np.asarray(state_dict['rope_embed.periods'], np.float32)
    ours = vit.rope_periods(spec)
    if periods.shape != ours.shape or not np.allclose(periods, ours, rtol=1e-6):
      raise WeightsError(f'rope_embed.periods of the weights ({periods.shape}) differ from the RoPE of '
                         f'this backbone (base {spec.rope_base}, head dim {spec.width // spec.heads})')
  used = set()

  def fill(path, leaf):
    keys = [getattr(p, 'key', p) for p in path][1:]  # drop the collection
    key = _torch_key(keys)
    if key not in state_dict:
      raise WeightsError(f'the weights have no {key} (for {"/".join(keys)})')
    value = np.asarray(state_dict[key], np.float32)
    if keys[-1] == 'kernel':
      value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value.T
    mask = state_dict.get(key + '_mask')  # qkv.bias -> qkv.bias_mask
    if mask is not None:
      value = value * np.asarray(mask, np.float32)
    if value.shape != leaf.shape:
      raise WeightsError(f'{key} has shape {value.shape} after conversion; the model needs {leaf.shape}')
    used.add(key)
    return value

  out = jax.tree_util.tree_map_with_path(fill, template)
  unused = sorted(k for k in state_dict if k not in used and not _IGNORED.search(k))
  if unused:
    raise WeightsError(f'{len(unused)} tensors of the weights match no backbone variable, e.g. {unused[0]}')
  return out
