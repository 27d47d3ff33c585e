"""Backbones returning named stages: ResNet-50/101 (two stems), VGG16-bn, a tiny ResNet, and
the DINOv2 / DINOv3 vision transformers of models/vit.py.

Every backbone is a sequence of the five stages STAGES and can run any
contiguous slice of them (`start`, `stop`), so a model can put a module (the
style memory) between two stages. Output stride 8 follows PSPNet/PFENet:
layer3 and layer4 keep stride 1 and dilate their 3x3 convs by 2 and 4.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmtjax.errors import UserError
from mmtjax.models import vit

STAGES = vit.STAGES
prefix_key = vit.prefix_key


def _norm(train_bn: bool, axis_name: str | None, dtype: Any, name: str | None = None):
  # momentum 0.9 / epsilon 1e-5 are torch's BatchNorm2d defaults (momentum 0.1 there).
  return nn.BatchNorm(use_running_average=not train_bn, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name if train_bn else None, dtype=dtype, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convs with a residual (ResNet-18/34 block)."""
  features: int
  strides: int = 1
  dilation: int = 1
  axis_name: str | None = None
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train_bn: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    d = self.dilation
    y = conv(self.features, (3, 3), self.strides, padding=d, kernel_dilation=d)(x)
    y = nn.relu(_norm(train_bn, self.axis_name, self.dtype)(y))
    y = conv(self.features, (3, 3), padding=d, kernel_dilation=d)(y)
    y = _norm(train_bn, self.axis_name, self.dtype)(y)
    if x.shape[-1] != self.features or self.strides != 1:
      x = conv(self.features, (1, 1), self.strides, name='downsample_conv')(x)
      x = _norm(train_bn, self.axis_name, self.dtype, name='downsample_bn')(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided, dilated) -> 1x1 x4, torchvision's ResNet v1.5 block."""
  features: int
  strides: int = 1
  dilation: int = 1
  axis_name: str | None = None
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train_bn: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    out = self.features * self.expansion
    d = self.dilation
    y = nn.relu(_norm(train_bn, self.axis_name, self.dtype)(conv(self.features, (1, 1))(x)))
    y = conv(self.features, (3, 3), self.strides, padding=d, kernel_dilation=d)(y)
    y = nn.relu(_norm(train_bn, self.axis_name, self.dtype)(y))
    y = _norm(train_bn, self.axis_name, self.dtype)(conv(out, (1, 1))(y))
    if x.shape[-1] != out or self.strides != 1:
      x = conv(out, (1, 1), self.strides, name='downsample_conv')(x)
      x = _norm(train_bn, self.axis_name, self.dtype, name='downsample_bn')(x)
    return nn.relu(x + y)


class Stem(nn.Module):
  """'torchvision': 7x7/2 conv; 'deep': three 3x3 convs (PSPNet); both then 3x3/2 max-pool."""
  kind: str
  widths: Sequence[int]
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train_bn: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    if self.kind == 'torchvision':
      x = conv(self.widths[-1], (7, 7), 2, padding=3)(x)
      x = nn.relu(_norm(train_bn, self.axis_name, self.dtype)(x))
    elif self.kind == 'deep':
      for i, width in enumerate(self.widths):
        x = conv(width, (3, 3), 2 if i == 0 else 1, padding=1)(x)
        x = nn.relu(_norm(train_bn, self.axis_name, self.dtype)(x))
    else:
      raise UserError(f"stem must be 'torchvision' or 'deep', got {self.kind!r}")
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class Stage(nn.Module):
  """A run of residual blocks; the first may stride."""
  block: Any
  features: int
  num_blocks: int
  strides: int
  dilation: int
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train_bn: bool):
    for i in range(self.num_blocks):
      x = self.block(self.features, self.strides if i == 0 else 1, self.dilation,
                     self.axis_name, self.dtype)(x, train_bn)
    return x


class VGGStage(nn.Module):
  """VGG-bn convs (3x3 + BN + ReLU), then an optional 2x2 max-pool."""
  features: int
  num_convs: int
  pool: bool
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train_bn: bool):
    for _ in range(self.num_convs):
      x = nn.Conv(self.features, (3, 3), padding=1, dtype=self.dtype)(x)
      x = nn.relu(_norm(train_bn, self.axis_name, self.dtype)(x))
    return nn.max_pool(x, (2, 2), (2, 2)) if self.pool else x


class Backbone(nn.Module):
  """Five named stages; `__call__` runs the slice [start, stop] of them.

  Attributes:
    arch: 'resnet' or 'vgg'.
    stage_sizes: blocks per ResNet layer, or convs per VGG stage (5 values).
    widths: ResNet layer widths (before expansion) or VGG stage widths.
    block: 'bottleneck' or 'basic' (ResNet).
    stem: 'torchvision' or 'deep' (ResNet).
    stem_widths: widths of the deep stem's three convs.
    stem_width: the 7x7 stem's width (None: widths[0], torchvision's 64).
    output_stride: 8 (dilated) or 32.
  """
  arch: str = 'resnet'
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  widths: Sequence[int] = (64, 128, 256, 512)
  block: str = 'bottleneck'
  stem: str = 'torchvision'
  stem_widths: Sequence[int] = (64, 64, 128)
  stem_width: int | None = None
  output_stride: int = 8
  axis_name: str | None = None
  dtype: Any = jnp.float32

  def setup(self):
    if self.output_stride not in (8, 32):
      raise UserError(f'output_stride must be 8 or 32, got {self.output_stride}')
    kw = dict(axis_name=self.axis_name, dtype=self.dtype)
    if self.arch == 'resnet':
      block = {'bottleneck': Bottleneck, 'basic': BasicBlock}[self.block]
      stem_widths = self.stem_widths if self.stem == 'deep' else (self.stem_width or self.widths[0],)
      dilated = self.output_stride == 8
      self.stages = [
          Stem(self.stem, stem_widths, **kw),
          Stage(block, self.widths[0], self.stage_sizes[0], 1, 1, **kw),
          Stage(block, self.widths[1], self.stage_sizes[1], 2, 1, **kw),
          Stage(block, self.widths[2], self.stage_sizes[2], 1 if dilated else 2, 2 if dilated else 1, **kw),
          Stage(block, self.widths[3], self.stage_sizes[3], 1 if dilated else 2, 4 if dilated else 1, **kw),
      ]
    elif self.arch == 'vgg':
      # PFENet's VGG at stride 8 drops the max-pools after blocks 4 and 5.
      pools = (True, True, True, self.output_stride == 32, self.output_stride == 32)
      self.stages = [VGGStage(w, n, p, **kw) for w, n, p in zip(self.widths, self.stage_sizes, pools)]
    else:
      raise UserError(f"arch must be 'resnet' or 'vgg', got {self.arch!r}")

  def __call__(self, x: jax.Array, *, train_bn: bool, start: str = 'stem',
               stop: str = 'layer4', prefix: jax.Array | None = None) -> dict[str, jax.Array]:
    """Runs stages start..stop on x ([B, H, W, C], the input of `start`).

    Returns a dict from stage name to its output [B, h, w, c]. `prefix` (a
    ViT's cls and register tokens) has no meaning for a CNN.
    """
    del prefix
    first, last = STAGES.index(start), STAGES.index(stop)
    outputs = {}
    for name, stage in zip(STAGES[first:last + 1], self.stages[first:last + 1]):
      x = stage(x, train_bn)
      outputs[name] = x
    return outputs

  def readout(self, x: jax.Array) -> jax.Array:
    """What a head reads from a stage's output: the map itself (a ViT: its final LayerNorm)."""
    return x


_BACKBONES = {
    'resnet50': dict(arch='resnet', stage_sizes=(3, 4, 6, 3), block='bottleneck'),
    'resnet101': dict(arch='resnet', stage_sizes=(3, 4, 23, 3), block='bottleneck'),
    'vgg16_bn': dict(arch='vgg', stage_sizes=(2, 2, 3, 3, 3), widths=(64, 128, 256, 512, 512)),
    # CPU-sized network for tests and the embedded demo.
    'resnet_tiny': dict(arch='resnet', stage_sizes=(1, 1, 1, 1), widths=(16, 32, 64, 128),
                        block='basic', stem='deep', stem_widths=(16, 16, 32)),
    # The architecture of tests/golden/layouts' timm ResNets (bottleneck, one block a stage, timm's
    # 64-wide 7x7 stem; its deep stem with model.stem=deep), CPU-sized, for the weight-layout tests.
    'resnet_golden': dict(arch='resnet', stage_sizes=(1, 1, 1, 1), widths=(8, 16, 32, 64),
                          block='bottleneck', stem_widths=(8, 8, 16), stem_width=64),
}


NAMES = tuple(sorted(_BACKBONES)) + tuple(sorted(vit.SPECS))

# What a method reads from a ViT (config model.vit_blocks, model.vit_norm; no meaning for a CNN):
# where layer1..layer4 end (None: the quarter points) and whether the final LayerNorm is applied.
READOUT_DEFAULTS = {'vit_blocks': None, 'vit_norm': True}


def readout_fields() -> dict:
  """The readout fields every method's model section carries, typed for the command line
  (e.g. --config.model.vit_blocks=3,6,8,10 --config.model.vit_norm=False)."""
  from ml_collections import config_dict  # noqa: PLC0415
  return {'vit_blocks': config_dict.placeholder(tuple), 'vit_norm': True}


def readout_options(model_config) -> dict:
  """get_backbone's readout keyword arguments from a config's model section."""
  blocks = model_config.get('vit_blocks')
  return {'vit_blocks': None if blocks is None else tuple(blocks),
          'vit_norm': bool(model_config.get('vit_norm', True))}


def is_vit(name: str) -> bool:
  """A DINOv2 / DINOv3 vision transformer (frozen by default; no BatchNorm, no stem options)."""
  return name in vit.SPECS


def get_backbone(name: str, *, stem: str | None = None, output_stride: int = 8,
                 axis_name: str | None = None, dtype: Any = jnp.float32,
                 attention: str = 'fused', vit_blocks: Sequence[int] | None = None,
                 vit_norm: bool = True) -> nn.Module:
  """Builds a backbone by name: resnet50, resnet101, vgg16_bn, resnet_tiny, or a ViT of
  models.vit.SPECS (dinov2_vitb14_reg, dinov3_vitl16, ...; stem and output_stride do not apply;
  vit_blocks and vit_norm choose what its stages read: READOUT_DEFAULTS)."""
  if is_vit(name):
    spec = vit.SPECS[name]
    try:
      blocks = None if vit_blocks is None else vit.stage_ends(spec.depth, tuple(vit_blocks))
    except ValueError as e:
      raise UserError(f'{e} for {name}') from None
    return vit.VisionTransformer(spec, attention=attention, dtype=dtype, blocks=blocks, norm_readout=vit_norm)
  if name not in _BACKBONES:
    raise UserError(f'unknown backbone {name!r}; choose from {list(NAMES)}')
  spec = dict(_BACKBONES[name])
  if stem is not None and spec['arch'] == 'resnet':
    spec['stem'] = stem
  return Backbone(**spec, output_stride=output_stride, axis_name=axis_name, dtype=dtype)
