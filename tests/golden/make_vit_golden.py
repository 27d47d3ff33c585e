r"""Writes the DINOv2 / DINOv3 golden files with Meta's own model code (tests/test_vit.py reads them).

Run in a separate virtualenv with PyTorch (never a dependency of mmtjax), with
the official repositories' packages importable:

  python -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
  git -C dinov2 archive HEAD dinov2 | tar -x -C /tmp/official        # facebookresearch/dinov2
  git -C dinov3 archive HEAD dinov3 | tar -x -C /tmp/official/v3     # facebookresearch/dinov3
  /tmp/torchenv/bin/python tests/golden/make_vit_golden.py /tmp/official /tmp/official/v3

Used here: dinov2 b8931f7, dinov3 6876159, torch 2.13.0+cpu. For each tiny
random-initialised configuration it saves the model's state dict as a real
`.pth` (torch.save, the zip format Meta's files use) and, for two input sizes
(one needing position-embedding interpolation for DINOv2, two RoPE grids for
DINOv3), the inputs and the official outputs as `.npz`:
`get_intermediate_layers` at the four quarter points, raw (norm=False) and
normed (norm=True) patch tokens [B, h, w, C], and the final normed cls token.
"""

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, 'vit')

# name -> (family, constructor kwargs, input sizes (H, W))
CONFIGS = {
    # Plain DINOv2 (as dinov2_vit*14): scale-factor interpolation with offset 0.1, no antialias.
    'dinov2_tiny': ('dinov2', dict(img_size=56, patch_size=14, embed_dim=64, depth=4, num_heads=2,
                                   init_values=1.0, block_chunks=0, num_register_tokens=0,
                                   interpolate_antialias=False, interpolate_offset=0.1),
                    [(56, 56), (70, 98)]),
    # DINOv2 with registers (as dinov2_vit*14_reg): antialiased interpolation to the exact size,
    # and ViT-g's fused SwiGLU FFN.
    'dinov2_tiny_reg4_swiglu': ('dinov2', dict(img_size=56, patch_size=14, embed_dim=64, depth=4,
                                               num_heads=2, init_values=1.0, block_chunks=0,
                                               ffn_layer='swiglufused', num_register_tokens=4,
                                               interpolate_antialias=True, interpolate_offset=0.0),
                                [(84, 70), (42, 42)]),
    # DINOv3 as dinov3_vit{s,b,l}16: RoPE, 4 storage tokens, LayerScale 1e-5, LayerNorm eps 1e-5,
    # masked k bias.
    'dinov3_tiny_reg4': ('dinov3', dict(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                                        ffn_ratio=4, pos_embed_rope_base=100,
                                        pos_embed_rope_normalize_coords='separate',
                                        pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype='fp32',
                                        qkv_bias=True, layerscale_init=1.0e-05, norm_layer='layernormbf16',
                                        ffn_layer='mlp', n_storage_tokens=4, mask_k_bias=True),
                         [(64, 64), (48, 80)]),
    # DINOv3's SwiGLU FFN (the S+/L+/H+ models).
    'dinov3_tiny_reg4_swiglu': ('dinov3', dict(img_size=64, patch_size=16, embed_dim=64, depth=4,
                                               num_heads=2, ffn_ratio=6, pos_embed_rope_base=100,
                                               pos_embed_rope_normalize_coords='separate',
                                               pos_embed_rope_dtype='fp32', qkv_bias=True,
                                               layerscale_init=1.0e-05, norm_layer='layernormbf16',
                                               ffn_layer='swiglu', n_storage_tokens=4, mask_k_bias=True),
                                [(32, 48)]),
}


def build(family, kwargs, seed):
  torch.manual_seed(seed)
  if family == 'dinov2':
    from dinov2.models.vision_transformer import DinoVisionTransformer
    model = DinoVisionTransformer(**kwargs)
  else:
    from dinov3.models.vision_transformer import DinoVisionTransformer
    model = DinoVisionTransformer(**kwargs)
    model.init_weights()
  # Random (not init-constant) LayerScale, norms, tokens and biases, so that every tensor matters.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith(('ls1.gamma', 'ls2.gamma')):
        p.copy_(torch.rand_like(p) + 0.5)
      elif name.endswith('.bias') or 'norm' in name or name.endswith(('token', 'tokens')):
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def main():
  sys.path[:0] = sys.argv[1:]
  os.makedirs(OUT, exist_ok=True)
  for seed, (name, (family, kwargs, sizes)) in enumerate(CONFIGS.items()):
    model = build(family, kwargs, seed)
    torch.save(model.state_dict(), os.path.join(OUT, f'{name}.pth'))
    arrays = {}
    gen = torch.Generator().manual_seed(100 + seed)
    for i, (h, w) in enumerate(sizes):
      x = torch.randn(2, 3, h, w, generator=gen)
      with torch.no_grad():
        kw = dict(n=[0, 1, 2, 3], reshape=True, return_class_token=True)
        raw = model.get_intermediate_layers(x, norm=False, **kw)
        normed = model.get_intermediate_layers(x, norm=True, **kw)
      arrays[f'input_{i}'] = x.permute(0, 2, 3, 1).numpy()
      for s in range(4):
        arrays[f'raw_{i}_layer{s + 1}'] = raw[s][0].permute(0, 2, 3, 1).numpy()
        arrays[f'norm_{i}_layer{s + 1}'] = normed[s][0].permute(0, 2, 3, 1).numpy()
      arrays[f'cls_{i}'] = normed[3][1].numpy()
    np.savez_compressed(os.path.join(OUT, f'{name}.npz'), **arrays)
    print(name, {k: v.shape for k, v in arrays.items() if k.endswith(('layer4', 'cls_0'))})


if __name__ == '__main__':
  main()
