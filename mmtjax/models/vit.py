"""DINOv2 and DINOv3 vision transformers as five-stage backbones.

Written after facebookresearch/dinov2 (models/vision_transformer.py, layers/)
and facebookresearch/dinov3 (models/vision_transformer.py, layers/), whose
module names the Flax tree keeps (patch_embed, blocks_i/attn/qkv, ls1, mlp/fc1,
norm...), so Meta's state dicts map onto it key for key (weights/vit.py).

Stages, as the ResNets' (backbones.STAGES): 'stem' = patch embedding, cls,
register tokens and (DINOv2) position embeddings; 'layer1'..'layer4' = four
equal groups of blocks, ending at the quarter points DINOv2's segmentation and
depth heads read. Each stage outputs its patch tokens as a [B, h, w, C] map:
the residual stream itself, so a module between two stages (MMT's style
memory) changes what the next stage reads. The cls and register tokens stay
inside the backbone: they travel beside the map as outputs[prefix_key(stage)]
[B, 1 + R, C] and come back through `prefix=` when a later call starts at the
next stage. Where the stages end is the backbone's `blocks` (config
model.vit_blocks): by default the quarter points, or any four ascending block
counts, e.g. (3, 6, 8, 10) makes layer4 the output of block 10 of 12, and
blocks 11-12 are never built or run. `readout` is what a head reads from a
stage, as Meta's `get_intermediate_layers` gives it: the final LayerNorm
applied (norm=True, `norm_readout`), or the raw residual stream.

Inputs whose sides are not multiples of the patch size (HSNet's 400 x 400 with
patch 14) are bilinearly resized to the nearest multiple (at least one patch)
before the patch embedding; predictions are scored at the label size as for
every backbone (docs/assumptions.md).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

STAGES = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')
ATTENTIONS = ('fused', 'plain')  # jax.nn.dot_product_attention, or einsum + softmax in float32


def prefix_key(stage: str) -> str:
  """Key of a stage's cls + register tokens in a ViT's outputs."""
  return f'{stage}/prefix'


@dataclasses.dataclass(frozen=True)
class ViTSpec:
  """One ViT architecture, as Meta's hub constructors configure it."""
  family: str  # 'dinov2' (learned position embeddings) or 'dinov3' (RoPE)
  patch: int
  width: int
  depth: int
  heads: int
  ffn: str = 'mlp'  # 'mlp', 'swiglu_fused' (DINOv2 g: w12, w3), 'swiglu' (DINOv3: w1, w2, w3)
  ffn_ratio: float = 4.0
  registers: int = 0
  ln_eps: float = 1e-6
  layerscale: float = 1.0  # LayerScale init (random init only; files carry their own)
  pos_grid: int = 37  # DINOv2: position embeddings of a 518 px / 14 grid
  antialias: bool = False  # DINOv2 interpolate_antialias
  offset: float = 0.1  # DINOv2 interpolate_offset
  rope_base: float = 100.0  # DINOv3

  @property
  def ffn_hidden(self) -> int:
    hidden = int(self.width * self.ffn_ratio)
    if self.ffn == 'swiglu_fused':  # dinov2 SwiGLUFFNFused
      return (int(hidden * 2 / 3) + 7) // 8 * 8
    if self.ffn == 'swiglu':  # dinov3 SwiGLUFFN, align_to 8
      d = int(hidden * 2 / 3)
      return d + (-d % 8)
    return hidden


def _v2(width, depth, heads, registers, ffn='mlp'):
  # dinov2/hub/backbones.py: the _reg models interpolate with antialias and no offset.
  return ViTSpec('dinov2', 14, width, depth, heads, ffn=ffn, registers=registers, ln_eps=1e-6,
                 layerscale=1.0, antialias=registers > 0, offset=0.0 if registers else 0.1)


def _v3(width, depth, heads, ffn='mlp', ffn_ratio=4.0):
  # dinov3/hub/backbones.py: 4 storage tokens, LayerScale 1e-5, 'layernormbf16' (eps 1e-5),
  # RoPE base 100 with 'separate' coordinates, masked k bias.
  return ViTSpec('dinov3', 16, width, depth, heads, ffn=ffn, ffn_ratio=ffn_ratio, registers=4,
                 ln_eps=1e-5, layerscale=1e-5)


SPECS = {
    'dinov2_vits14': _v2(384, 12, 6, 0), 'dinov2_vits14_reg': _v2(384, 12, 6, 4),
    'dinov2_vitb14': _v2(768, 12, 12, 0), 'dinov2_vitb14_reg': _v2(768, 12, 12, 4),
    'dinov2_vitl14': _v2(1024, 24, 16, 0), 'dinov2_vitl14_reg': _v2(1024, 24, 16, 4),
    'dinov2_vitg14': _v2(1536, 40, 24, 0, 'swiglu_fused'),
    'dinov2_vitg14_reg': _v2(1536, 40, 24, 4, 'swiglu_fused'),
    'dinov3_vits16': _v3(384, 12, 6), 'dinov3_vits16plus': _v3(384, 12, 6, 'swiglu', 6.0),
    'dinov3_vitb16': _v3(768, 12, 12), 'dinov3_vitl16': _v3(1024, 24, 16),
    'dinov3_vitl16plus': _v3(1024, 24, 16, 'swiglu', 6.0),
    'dinov3_vith16plus': _v3(1280, 32, 20, 'swiglu', 6.0),
    # CPU-sized networks for tests and the embedded demo (random weights, no released file).
    'dinov2_tiny': ViTSpec('dinov2', 8, 32, 4, 2, pos_grid=8),
    'dinov2_tiny_reg': ViTSpec('dinov2', 8, 32, 4, 2, registers=4, pos_grid=8, antialias=True, offset=0.0),
    'dinov3_tiny': ViTSpec('dinov3', 8, 32, 4, 2, registers=4, ln_eps=1e-5, layerscale=1e-5),
    # The architecture of tests/golden/vit/dinov2_tiny.pth, a file Meta's own code wrote: a
    # CPU-sized ViT that has real weights, for the command-line tests of pretrained loading.
    'dinov2_golden14': ViTSpec('dinov2', 14, 64, 4, 2, pos_grid=4),
    # With 4 registers: the architecture of tests/golden/layouts' register files (transformers, timm).
    'dinov2_golden14_reg': ViTSpec('dinov2', 14, 64, 4, 2, registers=4, pos_grid=4, antialias=True, offset=0.0),
    # DINOv3 at that size (patch 16): tests/golden/layouts' DINOv3 files (transformers, timm).
    'dinov3_golden16': ViTSpec('dinov3', 16, 64, 4, 2, registers=4, ln_eps=1e-5, layerscale=1e-5),
    'dinov3_golden16_swiglu': ViTSpec('dinov3', 16, 64, 4, 2, ffn='swiglu', ffn_ratio=6.0, registers=4,
                                      ln_eps=1e-5, layerscale=1e-5),
}


# --- position encodings (numpy, at trace time: the grid is static) ----------------------------

def _cubic(x: np.ndarray, a: float) -> np.ndarray:
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(size_in: int, size_out: int, scale: float | None, antialias: bool) -> np.ndarray:
  """[size_out, size_in] weights of torch's bicubic interpolation along one axis (align_corners
  False). `scale`: the scale factor passed to F.interpolate, or None (size only). Without
  antialias: A = -0.75, source index scale (i + 0.5) - 0.5, border indices clamped; with it
  (torch's separable AA kernel, PIL's): A = -0.5, support widened by the scale when shrinking,
  truncated at the borders and renormalised."""
  ratio = 1.0 / scale if scale else size_in / size_out
  m = np.zeros((size_out, size_in))
  if not antialias:
    for i in range(size_out):
      src = ratio * (i + 0.5) - 0.5
      base = math.floor(src)
      t = src - base
      for j, w in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)):
        m[i, min(max(base + j, 0), size_in - 1)] += w
    return m
  support = 2.0 * ratio if ratio >= 1.0 else 2.0
  inv = 1.0 / ratio if ratio >= 1.0 else 1.0
  for i in range(size_out):
    center = ratio * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), size_in)
    w = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
    m[i, lo:hi] = w / w.sum() if w.sum() != 0 else w
  return m


def rope_sincos(h: int, w: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
  """DINOv3's RoPE ('separate' coordinates, eval mode): sin, cos [h*w, head_dim] float32."""
  periods = (base ** (2 * np.arange(head_dim // 4, dtype=np.float32) / (head_dim // 2))).astype(np.float32)
  ch = np.arange(0.5, h, dtype=np.float32) / h
  cw = np.arange(0.5, w, dtype=np.float32) / w
  coords = np.stack(np.meshgrid(ch, cw, indexing='ij'), axis=-1).reshape(-1, 2) * 2.0 - 1.0
  angles = (2 * np.pi * coords[:, :, None] / periods[None, None, :]).reshape(h * w, -1)
  angles = np.tile(angles, (1, 2)).astype(np.float32)
  return np.sin(angles), np.cos(angles)


def rope_periods(spec: ViTSpec) -> np.ndarray:
  head_dim = spec.width // spec.heads
  return (spec.rope_base ** (2 * np.arange(head_dim // 4, dtype=np.float32) / (head_dim // 2))
          ).astype(np.float32)


def _rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


# --- modules --------------------------------------------------------------------------------

_dense_init = nn.initializers.truncated_normal(0.02)


class LayerScale(nn.Module):
  init: float

  @nn.compact
  def __call__(self, x):
    return x * self.param('gamma', nn.initializers.constant(self.init), (x.shape[-1],)).astype(x.dtype)


class PatchEmbed(nn.Module):
  """patch x patch convolution with stride patch ('proj', as the official PatchEmbed)."""
  width: int
  patch: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding='VALID',
                   dtype=self.dtype, name='proj')(x)


class Attention(nn.Module):
  """Multi-head self-attention; DINOv3 rotates the patch tokens' queries and keys (RoPE)."""
  heads: int
  attention: str = 'fused'  # 'fused' (jax.nn.dot_product_attention) or 'plain' (einsum + softmax)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, rope=None):
    b, n, c = x.shape
    qkv = nn.Dense(3 * c, dtype=self.dtype, kernel_init=_dense_init, name='qkv')(x)
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.heads, c // self.heads), 2, 0)  # [B, N, H, D]
    if rope is not None:
      sin, cos = (jnp.asarray(t)[None, :, None, :] for t in rope)  # [1, hw, 1, D]
      p = n - sin.shape[1]

      def rotate(t):  # in float32, as the official code (rope dtype fp32)
        t32 = t[:, p:].astype(jnp.float32)
        return jnp.concatenate([t[:, :p], (t32 * cos + _rotate_half(t32) * sin).astype(t.dtype)], axis=1)

      q, k = rotate(q), rotate(k)
    if self.attention not in ATTENTIONS:
      raise ValueError(f'attention must be one of {ATTENTIONS}, got {self.attention!r}')
    if self.attention == 'fused':
      out = jax.nn.dot_product_attention(q, k, v)
    else:
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(c // self.heads).astype(np.float32)
      out = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype), v)
    return nn.Dense(c, dtype=self.dtype, kernel_init=_dense_init, name='proj')(out.reshape(b, n, c))


class FFN(nn.Module):
  kind: str
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=_dense_init, name=name)  # noqa: E731
    c = x.shape[-1]
    if self.kind == 'mlp':
      return dense(c, 'fc2')(nn.gelu(dense(self.hidden, 'fc1')(x), approximate=False))
    if self.kind == 'swiglu_fused':
      x1, x2 = jnp.split(dense(2 * self.hidden, 'w12')(x), 2, axis=-1)
    else:
      x1, x2 = dense(self.hidden, 'w1')(x), dense(self.hidden, 'w2')(x)
    return dense(c, 'w3')(nn.silu(x1) * x2)


class Block(nn.Module):
  spec: ViTSpec
  attention: str = 'fused'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, rope=None):
    s = self.spec
    norm = lambda name: nn.LayerNorm(s.ln_eps, dtype=self.dtype, name=name)  # noqa: E731
    x = x + LayerScale(s.layerscale, name='ls1')(
        Attention(s.heads, self.attention, self.dtype, name='attn')(norm('norm1')(x), rope))
    return x + LayerScale(s.layerscale, name='ls2')(
        FFN(s.ffn, s.ffn_hidden, self.dtype, name='mlp')(norm('norm2')(x)))


def stage_ends(depth: int, blocks: tuple[int, ...] | None = None) -> tuple[int, ...]:
  """How many blocks have run at the end of layer1..layer4: `blocks` checked (four ascending
  counts in 1..depth), or the quarter points of `depth`."""
  if blocks is None:
    return tuple(depth * i // 4 for i in range(1, 5))
  blocks = tuple(blocks)
  if (len(blocks) != 4 or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks)
      or not 1 <= blocks[0] or blocks[-1] > depth or any(a >= b for a, b in zip(blocks, blocks[1:]))):
    raise ValueError(f'model.vit_blocks must be four ascending block counts in 1..{depth} (where layer1..layer4 '
                     f'end, e.g. {stage_ends(depth)}), got {blocks}')
  return blocks


class VisionTransformer(nn.Module):
  """A DINOv2 / DINOv3 ViT whose `__call__` runs the slice [start, stop] of its five stages.

  Same call as backbones.Backbone; `train_bn` has no meaning (no BatchNorm) and
  `prefix` carries the cls + register tokens [B, 1 + R, C] when starting after
  the stem (outputs[prefix_key(previous stage)] of an earlier call).

  Attributes:
    blocks: blocks run by the end of layer1..layer4 (stage_ends); None: the quarter points.
    norm_readout: `readout` applies the final LayerNorm (get_intermediate_layers(norm=True)).
  """
  spec: ViTSpec
  attention: str = 'fused'
  dtype: Any = jnp.float32
  blocks: tuple[int, ...] | None = None
  norm_readout: bool = True

  @property
  def arch(self) -> str:
    return self.spec.family

  def setup(self):
    s = self.spec
    if s.depth % 4 and self.blocks is None:
      raise ValueError(f'a ViT of depth {s.depth} needs model.vit_blocks (where its four stages end)')
    self.ends = stage_ends(s.depth, self.blocks)
    self.patch_embed = PatchEmbed(s.width, s.patch, self.dtype)
    self.cls_token = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, s.width))
    if s.family == 'dinov2':
      self.pos_embed = self.param('pos_embed', _dense_init, (1, s.pos_grid ** 2 + 1, s.width))
    if s.registers:
      name = 'register_tokens' if s.family == 'dinov2' else 'storage_tokens'
      self.registers = self.param(name, nn.initializers.normal(1e-6), (1, s.registers, s.width))
    # Named blocks_i as Meta's blocks.i; only those up to the last stage end are ever built.
    self.layers = [Block(s, self.attention, self.dtype, name=f'blocks_{i}') for i in range(self.ends[-1])]
    self.norm = nn.LayerNorm(s.ln_eps, dtype=self.dtype)

  def _interpolated_pos(self, h: int, w: int) -> jax.Array:
    """DINOv2 interpolate_pos_encoding: [1, 1 + h*w, C] for an h x w patch grid."""
    s = self.spec
    pos = self.pos_embed.astype(jnp.float32)
    m = s.pos_grid
    if (h, w) == (m, m):  # the official shortcut: the stored grid as it is
      return pos
    scales = ((h + s.offset) / m, (w + s.offset) / m) if s.offset else (None, None)
    mh = jnp.asarray(bicubic_matrix(m, h, scales[0], s.antialias), jnp.float32)
    mw = jnp.asarray(bicubic_matrix(m, w, scales[1], s.antialias), jnp.float32)
    grid = pos[0, 1:].reshape(m, m, -1)
    patch = jnp.einsum('ym,xn,mnc->yxc', mh, mw, grid, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([pos[:, :1], patch.reshape(1, h * w, -1)], axis=1)

  def _stem(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    s = self.spec
    b, hi, wi, _ = images.shape
    hp, wp = (max(1, round(x / s.patch)) * s.patch for x in (hi, wi))
    if (hp, wp) != (hi, wi):
      images = jax.image.resize(images, (b, hp, wp, images.shape[-1]), 'bilinear')
    x = self.patch_embed(images)  # [B, h, w, C]
    h, w = x.shape[1:3]
    x = x.reshape(b, h * w, -1)
    cls = jnp.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, x.shape[-1]))
    if s.family == 'dinov2':  # position embeddings on cls + patches, registers after
      x = jnp.concatenate([cls, x], axis=1) + self._interpolated_pos(h, w).astype(x.dtype)
      cls, x = x[:, :1], x[:, 1:]
    prefix = [cls]
    if s.registers:
      prefix.append(jnp.broadcast_to(self.registers.astype(x.dtype), (b, s.registers, x.shape[-1])))
    return x.reshape(b, h, w, -1), jnp.concatenate(prefix, axis=1)

  def __call__(self, x: jax.Array, *, train_bn: bool = False, start: str = 'stem', stop: str = 'layer4',
               prefix: jax.Array | None = None) -> dict[str, jax.Array]:
    """Runs stages start..stop on x (images [B, H, W, 3] for 'stem', else the previous stage's
    map [B, h, w, C] with its `prefix`). Returns stage -> patch map [B, h, w, C] and
    prefix_key(stage) -> cls + register tokens [B, 1 + R, C]."""
    del train_bn
    first, last = STAGES.index(start), STAGES.index(stop)
    outputs = {}
    if first == 0:
      x, prefix = self._stem(x)
      outputs['stem'], outputs[prefix_key('stem')] = x, prefix
      first = 1
    elif prefix is None:
      raise ValueError(f'a ViT started at {start!r} needs the prefix tokens of the stage before it')
    b, h, w, c = x.shape
    rope = None
    if self.spec.family == 'dinov3':
      rope = rope_sincos(h, w, c // self.spec.heads, self.spec.rope_base)
    tokens = jnp.concatenate([prefix.astype(x.dtype), x.reshape(b, h * w, c)], axis=1)
    t = prefix.shape[1]
    ends = (0, *self.ends)
    for stage in range(first, last + 1):
      for i in range(ends[stage - 1], ends[stage]):
        tokens = self.layers[i](tokens, rope)
      name = STAGES[stage]
      outputs[name] = tokens[:, t:].reshape(b, h, w, c)
      outputs[prefix_key(name)] = tokens[:, :t]
    return outputs

  def readout(self, x: jax.Array) -> jax.Array:
    """What a head reads from a stage's output: the final LayerNorm (Meta's heads'
    get_intermediate_layers(norm=True)), or with norm_readout False the raw tokens."""
    return self.norm(x) if self.norm_readout else x

  def cls(self, outputs: dict[str, jax.Array], stage: str = 'layer4') -> jax.Array:
    """The normed cls token [B, C] after `stage`."""
    return self.norm(outputs[prefix_key(stage)][:, 0])
