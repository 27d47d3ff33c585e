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
Every variable receives exactly one tensor of its shape. A complete file
loads into a model that runs fewer blocks (model.vit_blocks ending before the
last block) or reads the stages raw (no final norm): the tensors of what the
model never builds are checked against the full network's shapes, then left
unused and counted in one line. Anything else is a WeightsError naming the
first offending tensor.
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


def _convert(keys: list[str], key: str, state_dict: dict) -> np.ndarray:
  """The tensor `key` in Flax's layout (transposed kernels, masked k bias)."""
  value = np.asarray(state_dict[key], np.float32)
  if keys[-1] == 'kernel':
    value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value.T
  mask = state_dict.get(key + '_mask')  # qkv.bias -> qkv.bias_mask
  if mask is not None:
    value = value * np.asarray(mask, np.float32)
  return value


def full_shapes(spec: vit.ViTSpec) -> dict[str, tuple[list[str], tuple[int, ...]]]:
  """torch key -> (Flax path, shape) of every variable of the whole network (all blocks, final
  norm), traced abstractly: nothing is computed."""
  model = vit.VisionTransformer(spec)
  x = jax.ShapeDtypeStruct((1, 2 * spec.patch, 2 * spec.patch, 3), np.float32)
  tree = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x,
                                             method=lambda m, x: m.readout(m(x)['layer4'])), x)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [getattr(p, 'key', p) for p in path][1:]
    out[_torch_key(keys)] = (keys, tuple(leaf.shape))
  return out


def _describe(keys: list[str]) -> str:
  """'blocks 10-11 and norm' for the keys a model leaves unused (0-based, as the file's keys)."""
  blocks = sorted({int(m.group(1)) for k in keys if (m := re.match(r'^blocks\.(\d+)\.', k))})
  parts = []
  if blocks:
    parts.append(f'blocks.{blocks[0]}' if len(blocks) == 1 else f'blocks.{blocks[0]}-{blocks[-1]}')
  others = sorted({k.rsplit('.', 1)[0] for k in keys if not k.startswith('blocks.')})
  parts += others
  return ' and '.join(parts)


def vit_from_torch(state_dict: dict[str, np.ndarray], template: dict, spec: vit.ViTSpec,
                   note=None) -> dict:
  """Fills a ViT's {'params': ...} template from one of Meta's state dicts.

  note: called with one line when tensors of parts the model never runs (blocks after its
  last stage, the final norm of a raw readout) were checked and left unused.
  """
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
    value = _convert(keys, key, state_dict)
    if value.shape != leaf.shape:
      raise WeightsError(f'{key} has shape {value.shape} after conversion; the model needs {leaf.shape}')
    used.add(key)
    return value

  out = jax.tree_util.tree_map_with_path(fill, template)
  unused = sorted((k for k in state_dict if k not in used and not _IGNORED.search(k)), key=_natural)
  if not unused:
    return out
  full = full_shapes(spec)
  stray = [k for k in unused if k not in full]
  if stray:
    raise WeightsError(f'{len(stray)} tensors of the weights match no backbone variable, e.g. {stray[0]} '
                       f'(is the file of another size or family than model.backbone?)')
  for k in unused:  # Parts the model never runs: still the file of this network, shape for shape.
    keys, shape = full[k]
    value = _convert(keys, k, state_dict)
    if value.shape != shape:
      raise WeightsError(f'{k} has shape {value.shape} after conversion; this backbone needs {shape}')
  if note is not None:
    note(f'weights: {len(unused)} tensors ({_describe(unused)}) checked and left unused: this model never '
         f'runs them (model.vit_blocks, model.vit_norm)')
  return out


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]
