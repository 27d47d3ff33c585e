"""DINOv3 state dicts as transformers and timm name them -> Meta's names (weights.vit reads those).

Chosen by the keys found, never by the file name:
  - Meta (facebookresearch/dinov3): `storage_tokens`, `blocks.N.attn.qkv` with its `bias_mask`,
    `ls1.gamma`, `mlp.fc1/fc2` or SwiGLU's `mlp.w1/w2/w3`, `rope_embed.periods`; returned as it is;
  - transformers (DINOv3ViTModel, `save_pretrained`): `embeddings.patch_embeddings`,
    `embeddings.register_tokens`, `model.layer.N.attention.{q,k,v}_proj` (joined into one qkv; the
    k bias, which the model does not have, is zero as Meta's mask makes it) and `o_proj`,
    `layer_scale1.lambda1`, `mlp.up_proj/down_proj` or the gated `gate_proj/up_proj/down_proj`;
    also the naming of the first conversion script (`layer.N.attention.{query,key,value}`,
    `attention.proj`, `layer_scale1.gamma`, `embeddings.patch_embeddings.proj`,
    `rope_embeddings.periods`, Meta's mlp names);
  - timm (Eva as vit_*_patch16_dinov3(_qkvb) builds it): Meta's block names with `reg_token`,
    `gamma_1/gamma_2`, the q and v biases apart (`attn.q_bias`, `attn.v_bias`; the k bias zero) or
    no qkv bias at all (zero: the distilled models' biases are zero), SwiGLU as
    `mlp.fc1_g/fc1_x/fc2`.
The mapping follows the conversions where they live (transformers' convert_dinov3_vit_to_hf.py,
timm's eva.py checkpoint filter), written here from their key lists. SwiGLU: Meta's w1 is the
gated (SiLU) branch, w2 the linear one, w3 the output; transformers' gate/up/down and timm's
fc1_g/fc1_x/fc2 are the same three.
"""

from __future__ import annotations

import re

import numpy as np

from mmtjax.weights import files
from mmtjax.weights.torch_pth import WeightsError

LAYOUTS = ('Meta (storage_tokens, blocks.N.attn.qkv)', 'transformers (model.layer.N.attention.q_proj)',
           'transformers, first conversion (layer.N.attention.query)', 'timm (reg_token, blocks.N.gamma_1)')


def layout(state: dict) -> str:
  """'meta', 'transformers' or 'timm' by the keys found; WeightsError naming the layouts if none."""
  if 'embeddings.patch_embeddings.weight' in state or 'embeddings.patch_embeddings.proj.weight' in state:
    return 'transformers'
  if 'patch_embed.proj.weight' in state:
    timm = 'reg_token' in state or any(re.match(r'^blocks\.\d+\.gamma_1$', k) for k in state)
    return 'timm' if timm else 'meta'
  first = sorted(state)[:3]
  raise WeightsError(f'the weights match none of the DINOv3 layouts ({"; ".join(LAYOUTS)}); first keys: {first}')


def to_meta(state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
  """(the state dict under Meta's names, the layout it was read as)."""
  kind = layout(state)
  if kind == 'meta':
    return state, kind
  return (_from_timm(state) if kind == 'timm' else _from_transformers(state)), kind


def _qkv(parts: dict, block: str, width: int, kind: str) -> np.ndarray:
  """One qkv tensor from its q, k, v parts; a missing bias part is zero (Meta masks the k bias)."""
  if kind == 'weight':
    missing = sorted({'q', 'k', 'v'} - set(parts))
    if missing:
      raise WeightsError(f'block {block} has no {"/".join(missing)} projection weight')
    return np.concatenate([parts['q'], parts['k'], parts['v']])
  zero = np.zeros((width,), np.float32)
  return np.concatenate([np.asarray(parts.get(p, zero), np.float32) for p in ('q', 'k', 'v')])


def _width(state: dict) -> int:
  return int(next(v for k, v in state.items() if k.endswith('cls_token')).shape[-1])


_HF = [
    (r'^embeddings\.cls_token$', 'cls_token'),
    (r'^embeddings\.mask_token$', 'mask_token'),
    (r'^embeddings\.register_tokens$', 'storage_tokens'),
    (r'^embeddings\.patch_embeddings\.(proj\.)?', 'patch_embed.proj.'),
    (r'^rope_embeddings\.periods$', 'rope_embed.periods'),
    (r'^(?:model\.)?layer\.(\d+)\.norm([12])\.', r'blocks.\1.norm\2.'),
    (r'^(?:model\.)?layer\.(\d+)\.attention\.(?:o_proj|proj)\.', r'blocks.\1.attn.proj.'),
    (r'^(?:model\.)?layer\.(\d+)\.layer_scale([12])\.(?:lambda1|gamma)$', r'blocks.\1.ls\2.gamma'),
    (r'^(?:model\.)?layer\.(\d+)\.mlp\.gate_proj\.', r'blocks.\1.mlp.w1.'),
    (r'^(?:model\.)?layer\.(\d+)\.mlp\.(fc1|fc2|w1|w2|w3)\.', r'blocks.\1.mlp.\2.'),
    (r'^norm\.', 'norm.'),
]
_HF_QKV = re.compile(r'^(?:model\.)?layer\.(\d+)\.attention\.(q_proj|k_proj|v_proj|query|key|value)\.(weight|bias)$')
_HF_MLP = re.compile(r'^(?:model\.)?layer\.(\d+)\.mlp\.(up_proj|down_proj)\.(weight|bias)$')


def _from_transformers(state: dict) -> dict:
  gated = {m.group(1) for k in state if (m := re.match(r'^(?:model\.)?layer\.(\d+)\.mlp\.gate_proj\.', k))}
  out, qkv = {}, {}
  for k, v in state.items():
    if m := _HF_QKV.match(k):
      qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)[0]] = v
      continue
    if m := _HF_MLP.match(k):  # gated: up = w2, down = w3; plain: up = fc1, down = fc2
      block, proj, leaf = m.groups()
      name = ('w2' if proj == 'up_proj' else 'w3') if block in gated else ('fc1' if proj == 'up_proj' else 'fc2')
      out[f'blocks.{block}.mlp.{name}.{leaf}'] = v
      continue
    out[files.renamed(k, _HF)] = v
  _join_qkv(out, qkv, _width(state))
  return out


def _join_qkv(out: dict, qkv: dict, width: int) -> None:
  blocks = {block for block, _ in qkv}
  for block in blocks:
    out[f'blocks.{block}.attn.qkv.weight'] = _qkv(qkv.get((block, 'weight'), {}), block, width, 'weight')
    out[f'blocks.{block}.attn.qkv.bias'] = _qkv(qkv.get((block, 'bias'), {}), block, width, 'bias')


_TIMM = [
    (r'^reg_token$', 'storage_tokens'),
    (r'^blocks\.(\d+)\.gamma_([12])$', r'blocks.\1.ls\2.gamma'),
    (r'^blocks\.(\d+)\.mlp\.fc1_g\.', r'blocks.\1.mlp.w1.'),
    (r'^blocks\.(\d+)\.mlp\.fc1_x\.', r'blocks.\1.mlp.w2.'),
]


def _from_timm(state: dict) -> dict:
  swiglu = {m.group(1) for k in state if (m := re.match(r'^blocks\.(\d+)\.mlp\.fc1_g\.', k))}
  out, qkv = {}, {}
  for k, v in state.items():
    if m := re.match(r'^blocks\.(\d+)\.attn\.(q|v)_bias$', k):
      qkv.setdefault((m.group(1), 'bias'), {})[m.group(2)] = v
      continue
    if m := re.match(r'^blocks\.(\d+)\.attn\.qkv\.weight$', k):
      qkv.setdefault((m.group(1), 'bias'), {})
      out[k] = v
      continue
    if (m := re.match(r'^blocks\.(\d+)\.mlp\.fc2\.', k)) and m.group(1) in swiglu:
      k = k.replace('.mlp.fc2.', '.mlp.w3.')
    out[files.renamed(k, _TIMM)] = v
  width = _width(state)
  for (block, _), parts in qkv.items():
    if f'blocks.{block}.attn.qkv.bias' not in out:
      out[f'blocks.{block}.attn.qkv.bias'] = _qkv(parts, block, width, 'bias')
  return out
