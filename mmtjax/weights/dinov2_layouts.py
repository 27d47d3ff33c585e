"""DINOv2 state dicts as transformers and timm name them -> Meta's names (weights.vit reads those).

Chosen by the keys found, never by the file name:
  - Meta (facebookresearch/dinov2): `blocks.N.attn.qkv`, `patch_embed.proj`, `ls1.gamma`, `norm`;
    returned as it is;
  - transformers (Dinov2Model / Dinov2WithRegistersModel, `save_pretrained`): `embeddings.
    patch_embeddings.projection`, `encoder.layer.N.attention.attention.{query,key,value}` (joined
    into one qkv), `attention.output.dense`, `layer_scale1.lambda1`, `mlp.fc1/fc2` or SwiGLU's
    `mlp.weights_in/weights_out`, `layernorm`, `embeddings.register_tokens`; an optional `dinov2.`
    prefix (a task model's backbone) is dropped;
  - timm (vit_*_patch14_dinov2 / _reg4_dinov2, its state dict as saved): Meta's block names,
    `reg_token` for the registers and, in the register models, the cls position folded into
    `cls_token` with `pos_embed` holding only the patch grid (no_embed_class); SwiGLU as
    `mlp.fc1` / `mlp.fc2` (packed, gate first, as Meta's fused w12 / w3).
The mapping follows the conversions where they live (transformers' convert_dinov2_to_hf.py and
timm's vision_transformer.py checkpoint filter), written here from their key lists.
"""

from __future__ import annotations

import re

import numpy as np

from mmtjax.weights import files
from mmtjax.weights.torch_pth import WeightsError

LAYOUTS = ('Meta (blocks.N.attn.qkv)', 'transformers (encoder.layer.N.attention.attention.query)',
           'timm (blocks.N.attn.qkv with reg_token / no cls position)')


def layout(state: dict) -> str:
  """'meta', 'transformers' or 'timm' by the keys found; WeightsError naming the layouts if none.
  (timm's DINOv2 without registers or SwiGLU is Meta's layout exactly: read as 'meta'.)"""
  keys = {re.sub(r'^dinov2\.', '', k) for k in state}
  if 'embeddings.patch_embeddings.projection.weight' in keys:
    return 'transformers'
  if 'patch_embed.proj.weight' in keys:
    return 'timm' if 'reg_token' in keys or _packed_blocks(state) else 'meta'
  first = sorted(state)[:3]
  raise WeightsError(f'the weights match none of the DINOv2 layouts ({"; ".join(LAYOUTS)}); first keys: {first}')


def _packed_blocks(state: dict) -> set[str]:
  """Blocks whose mlp.fc1 is timm's packed SwiGLU: a [2H, D] matrix beside a [D, H] fc2."""
  out = set()
  for k, w in state.items():
    m = re.match(r'^blocks\.(\d+)\.mlp\.fc1\.weight$', k)
    fc2 = state.get(k.replace('.fc1.', '.fc2.'))
    if m and fc2 is not None and w.ndim == 2 and w.shape[0] == 2 * fc2.shape[1]:
      out.add(m.group(1))
  return out


def to_meta(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  """(the state dict under Meta's names, the layout it was read as)."""
  kind = layout(state)
  if kind == 'meta':
    return state, kind
  if kind == 'timm':
    return _from_timm(state), kind
  return _from_transformers(state), kind


def _from_timm(state: dict) -> dict:
  packed = _packed_blocks(state)
  out = {}
  for k, v in state.items():
    m = re.match(r'^blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)$', k)
    if m and m.group(1) in packed:
      k = f'blocks.{m.group(1)}.mlp.{"w12" if m.group(2) == "1" else "w3"}.{m.group(3)}'
    out['register_tokens' if k == 'reg_token' else k] = v
  n = out['pos_embed'].shape[1]
  if int(round(np.sqrt(n))) ** 2 == n:
    # no_embed_class (the register models): the cls position is folded into cls_token and pos_embed
    # holds the patch grid alone; Meta's has a cls slot first, here zero.
    pos = out['pos_embed']
    out['pos_embed'] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
  return out


_HF = [
    (r'^embeddings\.cls_token$', 'cls_token'),
    (r'^embeddings\.mask_token$', 'mask_token'),
    (r'^embeddings\.register_tokens$', 'register_tokens'),
    (r'^embeddings\.position_embeddings$', 'pos_embed'),
    (r'^embeddings\.patch_embeddings\.projection\.', 'patch_embed.proj.'),
    (r'^encoder\.layer\.(\d+)\.norm([12])\.', r'blocks.\1.norm\2.'),
    (r'^encoder\.layer\.(\d+)\.attention\.output\.dense\.', r'blocks.\1.attn.proj.'),
    (r'^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$', r'blocks.\1.ls\2.gamma'),
    (r'^encoder\.layer\.(\d+)\.mlp\.fc([12])\.', r'blocks.\1.mlp.fc\2.'),
    (r'^encoder\.layer\.(\d+)\.mlp\.weights_in\.', r'blocks.\1.mlp.w12.'),
    (r'^encoder\.layer\.(\d+)\.mlp\.weights_out\.', r'blocks.\1.mlp.w3.'),
    (r'^layernorm\.', 'norm.'),
]
_QKV = re.compile(r'^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$')


def _from_transformers(state: dict) -> dict:
  out, qkv = {}, {}
  for k, v in state.items():
    k = re.sub(r'^dinov2\.', '', k)
    m = _QKV.match(k)
    if m:
      qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = v
      continue
    out[files.renamed(k, _HF)] = v
  for (block, kind), parts in qkv.items():
    if set(parts) != {'query', 'key', 'value'}:
      raise WeightsError(f'transformers layout: block {block} has only {sorted(parts)} of its query/key/value '
                         f'{kind}')
    out[f'blocks.{block}.attn.qkv.{kind}'] = np.concatenate([parts['query'], parts['key'], parts['value']])
  return out
