"""torchvision / PSPNet state dicts -> the Flax variables of mmtjax's Backbone (and the
entry point, load_backbone, that also reads Meta's ViT files through weights.vit).

Names: a torchvision ResNet (conv1, bn1, layerN.B.convK / bnK / downsample.0-1),
PSPNet's deep-stem ResNet as PFENet and MM-Net load it (conv1-3 and bn1-3 in
the stem), and torchvision's vgg16_bn (features.I, convs then BatchNorms in
order). Conv weights [out, in, kh, kw] become kernels [kh, kw, in, out];
BatchNorm weight/bias/running_mean/running_var become scale/bias and the
batch_stats mean/var. Every backbone variable must receive exactly one
tensor of its shape; classifier weights (fc.*, classifier.*) are ignored.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import numpy as np

from mmtjax.weights import dinov2_layouts, dinov3_layouts, files, resnet_layouts
from mmtjax.weights import vit as vit_weights
from mmtjax.weights.torch_pth import WeightsError

_IGNORED = re.compile(r'^(fc|classifier)\.|num_batches_tracked$')


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))


def _resnet_names(flax_path: tuple[str, ...]) -> str:
  """('stages_2', 'Bottleneck_1', 'Conv_0') -> 'layer2.1.conv1' (module prefix of a torch key)."""
  stage = int(flax_path[0].split('_')[1])
  if stage == 0:  # stem: Conv_i / BatchNorm_i -> conv{i+1} / bn{i+1}
    kind, i = flax_path[1].rsplit('_', 1)
    return f"{'conv' if kind == 'Conv' else 'bn'}{int(i) + 1}"
  block = int(flax_path[1].rsplit('_', 1)[1])
  layer = flax_path[2]
  if layer == 'downsample_conv':
    name = 'downsample.0'
  elif layer == 'downsample_bn':
    name = 'downsample.1'
  else:
    kind, i = layer.rsplit('_', 1)
    name = f"{'conv' if kind == 'Conv' else 'bn'}{int(i) + 1}"
  return f'layer{stage}.{block}.{name}'


def _vgg_names(template: dict) -> dict[tuple[str, ...], str]:
  """Flax VGG module paths -> 'features.I' in torchvision's layer order."""
  out, index = {}, 0
  for s in range(5):
    stage = template['params'][f'stages_{s}']
    n = len([k for k in stage if k.startswith('Conv_')])
    for j in range(n):
      out[(f'stages_{s}', f'Conv_{j}')] = f'features.{index}'
      out[(f'stages_{s}', f'BatchNorm_{j}')] = f'features.{index + 1}'
      index += 3  # conv, BatchNorm, ReLU
    index += 1  # max-pool (torchvision's vgg16_bn keeps all five)
  return out


_LEAF = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias', ('params', 'scale'): 'weight',
         ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}


def backbone_from_torch(state_dict: dict[str, np.ndarray], template: dict, arch: str) -> dict:
  """Fills a backbone's {'params', 'batch_stats'} template from a torch state dict.

  Raises WeightsError naming the first missing, unused or mis-shaped tensor.
  """
  vgg = _vgg_names(template) if arch == 'vgg' else None
  used = set()

  def fill(path, leaf):
    keys = [getattr(p, 'key', p) for p in path]
    collection, module, name = keys[0], tuple(keys[1:-1]), keys[-1]
    prefix = vgg[module] if vgg is not None else _resnet_names(module)
    key = f'{prefix}.{_LEAF[(collection, name)]}'
    if key not in state_dict:
      raise WeightsError(f'the weights have no {key} (for {"/".join(keys)})')
    value = state_dict[key]
    value = _conv(value) if name == 'kernel' else value
    if value.shape != leaf.shape:
      raise WeightsError(f'{key} has shape {value.shape} after conversion; the model needs {leaf.shape}')
    used.add(key)
    return value.astype(np.float32)

  out = jax.tree_util.tree_map_with_path(fill, template)
  unused = sorted(k for k in state_dict if k not in used and not _IGNORED.search(k))
  if unused:
    raise WeightsError(f'{len(unused)} tensors of the weights match no backbone variable, e.g. {unused[0]}')
  return out


def _from_mmtjax_run(workdir: str, template: dict) -> dict:
  """The backbone of another mmtjax run's latest checkpoint (same backbone config)."""
  from mmtjax import checkpointing  # noqa: PLC0415  (avoids an import cycle through models)
  ckpts = checkpointing.Checkpoints(workdir, create=False)
  saved = ckpts.restore_raw()
  ckpts.close()
  loaded = {'params': saved['params'].get('encoder'),
            'batch_stats': saved['model_state'].get('batch_stats', {}).get('encoder')}
  loaded = {c: loaded[c] for c in template}

  def take(path, leaf):
    node = loaded
    for p in path:
      key = getattr(p, 'key', p)
      if not isinstance(node, dict) or key not in node:
        raise WeightsError(f'the run in {workdir} has no backbone variable {jax.tree_util.keystr(path)}')
      node = node[key]
    if np.shape(node) != leaf.shape:
      raise WeightsError(f'backbone variable {jax.tree_util.keystr(path)} has shape {np.shape(node)} in '
                         f'{workdir}; the model needs {leaf.shape}')
    return np.asarray(node, np.float32)

  return jax.tree_util.tree_map_with_path(take, template)


def load_backbone(path: str, variables: dict, backbone: Any, note=None) -> dict:
  """`variables` (params and batch_stats of a model) with their 'encoder' parts from `path`:
  a PyTorch .pth or a .safetensors file, a Hugging Face snapshot folder (weights.files), or the
  workdir of another mmtjax run (its latest checkpoint). A DINOv2's or DINOv3's keys may follow
  Meta's, transformers' or timm's names (weights.dinov2_layouts, weights.dinov3_layouts), a
  ResNet's torchvision's, PSPNet's or timm's (weights.resnet_layouts).

  `backbone` is the model's backbone module (models.backbones.get_backbone): its `arch` picks
  the key layout ('resnet', 'vgg', or a ViT family, whose weights are Meta's, read by
  weights.vit; a ViT has no BatchNorm statistics). `note` receives the one line saying which
  tensors of a complete ViT file the model never runs (weights.vit.vit_from_torch).
  """
  path = os.path.expanduser(path)
  vit_spec = getattr(backbone, 'spec', None)
  collections = ('params',) if vit_spec is not None else ('params', 'batch_stats')
  template = jax.device_get({c: variables[c]['encoder'] for c in collections})
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    loaded = _from_mmtjax_run(path, template)
  elif vit_spec is not None:  # Meta's, transformers' or timm's names, told apart by the keys
    layouts = dinov2_layouts if vit_spec.family == 'dinov2' else dinov3_layouts
    state, kind = layouts.to_meta(files.read(path))
    try:
      loaded = vit_weights.vit_from_torch(state, template, vit_spec, note=note)
    except WeightsError as e:
      raise WeightsError(f'{e} (read as the {kind} layout)') from None
  elif backbone.arch == 'resnet':
    state, kind = resnet_layouts.to_torchvision(files.read(path))
    try:
      loaded = backbone_from_torch(state, template, backbone.arch)
    except WeightsError as e:
      raise WeightsError(f'{e} (read as the {kind} layout)') from None
  else:
    loaded = backbone_from_torch(files.read(path), template, backbone.arch)
  out: dict[str, Any] = {c: dict(variables[c]) for c in variables}
  for c in collections:
    out[c]['encoder'] = loaded[c]
  return out
