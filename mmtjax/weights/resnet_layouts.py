"""ResNet state dicts as timm names them -> torchvision's / PSPNet's names (weights.convert reads those).

Chosen by the keys found, never by the file name:
  - torchvision (resnet50/101: conv1, bn1, layerN.B.convK/bnK, downsample.0/1) and PSPNet's
    deep-stem ResNet as PFENet and MM-Net load it (conv1-3, bn1-3): returned as they are;
  - timm: its plain-stem ResNets (resnet50.a1_in1k, resnet50.tv_in1k, resnet101.*) are
    torchvision's names exactly; its deep stem (stem_type='deep': `conv1.0`, `conv1.1`,
    `conv1.3`, `conv1.4`, `conv1.6`, then `bn1`) is the same three convs and BatchNorms as
    PSPNet's stem and is renamed to conv1/bn1, conv2/bn2, conv3/bn3 (model.stem='deep'). timm's
    released deep-stem networks have other widths (resnet50c/d: a 32-32-64 stem) or an average-
    pooled shortcut (resnet50d: downsample.1/2): they are other networks, refused with the first
    tensor that does not fit.
"""

from __future__ import annotations

import numpy as np

from mmtjax.weights.torch_pth import WeightsError

LAYOUTS = ('torchvision (conv1, layerN.B.convK)', 'PSPNet deep stem (conv1-3, bn1-3)',
           'timm (conv1.0-6 deep stem, or torchvision names)')

# timm's deep stem: Sequential(conv, bn, act, conv, bn, act, conv) then bn1 on its output.
_TIMM_DEEP = {'conv1.0.': 'conv1.', 'conv1.1.': 'bn1.', 'conv1.3.': 'conv2.', 'conv1.4.': 'bn2.',
              'conv1.6.': 'conv3.', 'bn1.': 'bn3.'}


def layout(state: dict) -> str:
  """'timm-deep' for timm's deep stem, 'torchvision' for torchvision's, PSPNet's and timm's plain
  names; WeightsError naming the layouts when the file has no ResNet stem at all."""
  if 'conv1.0.weight' in state:
    return 'timm-deep'
  if 'conv1.weight' in state:
    return 'torchvision'
  first = sorted(state)[:3]
  raise WeightsError(f'the weights match none of the ResNet layouts ({"; ".join(LAYOUTS)}); first keys: {first}')


def to_torchvision(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  """(the state dict under torchvision's / PSPNet's names, the layout it was read as)."""
  kind = layout(state)
  if kind == 'torchvision':
    return state, kind
  out = {}
  for k, v in state.items():
    for old, new in _TIMM_DEEP.items():
      if k.startswith(old):
        k = new + k[len(old):]
        break
    out[k] = v
  return out, kind
