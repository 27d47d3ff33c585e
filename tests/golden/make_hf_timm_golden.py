r"""Writes tests/golden/layouts/: DINOv2, DINOv3 and ResNet weights as transformers and timm save
them, with their outputs.

Run in a separate virtualenv (never a dependency of mmtjax), no download: each library builds its
own small network with random weights (DINOv2: width 64, depth 4, 2 heads, patch 14, a 4 x 4 grid
at 56 px; DINOv3: the same at patch 16 and 64 px, with its 4 storage tokens and RoPE; ResNet:
timm's bottleneck ResNet with one block per stage, widths 8-64, plain and deep stem) and saves it
its own way; its outputs for one input go beside it as .npz:

  python3.11 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch==2.13.0 transformers timm safetensors
  /tmp/hfvenv/bin/python tests/golden/make_hf_timm_golden.py tests/golden/layouts

Files (per model NAME): NAME/ (transformers: save_pretrained's config.json + model.safetensors) or
NAME.safetensors (timm: safetensors.torch.save_file of its state dict), and NAME.npz with
'image' [1, 56, 56, 3] (NHWC, the normalised input), 'raw' [1, 16, 64] (the patch tokens after
the last block, before the final norm), 'normed' (after it) and 'cls' [1, 64] (the normed cls
token). ResNet files hold 'image' [1, 64, 64, 3] and 'layer1'..'layer4' (NHWC, eval mode, output
stride 32). Versions in versions.txt.
"""

import os
import sys

import numpy as np
import torch


def _randomise(model, seed):
  """Every parameter drawn again (the libraries' inits leave layer scales at 1e-5 or 1, biases at 0:
  a layout mistake could hide behind them)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _image(seed, size=56):
  return torch.from_numpy(np.random.default_rng(seed).normal(size=(1, 3, size, size)).astype(np.float32))


def _save(out, name, image, raw, normed, cls):
  np.savez(os.path.join(out, f'{name}.npz'), image=image.permute(0, 2, 3, 1).numpy(), raw=raw.numpy(),
           normed=normed.numpy(), cls=cls.numpy())


def transformers_models(out):
  from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel
  common = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256, patch_size=14,
                image_size=56, layer_norm_eps=1e-6)
  for name, model, regs in (
      ('hf_dinov2', Dinov2Model(Dinov2Config(**common)), 0),
      ('hf_dinov2_reg', Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**common, num_register_tokens=4)), 4)):
    _randomise(model, 1 + regs)
    model.eval()
    image = _image(2)
    with torch.no_grad():
      o = model(pixel_values=image, output_hidden_states=True)
    raw = o.hidden_states[-1][:, 1 + regs:]
    normed = o.last_hidden_state[:, 1 + regs:]
    model.save_pretrained(os.path.join(out, name), safe_serialization=True)
    _save(out, name, image, raw, normed, o.last_hidden_state[:, 0])


def transformers_dinov3(out):
  from transformers import DINOv3ViTConfig, DINOv3ViTModel
  common = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256, patch_size=16,
                image_size=64, num_register_tokens=4, layerscale_value=1e-5)
  for name, config in (
      ('hf_dinov3', DINOv3ViTConfig(**common)),  # vits16 / vitb16 / vitl16: GELU MLP, no k bias
      ('hf_dinov3_swiglu', DINOv3ViTConfig(**common, use_gated_mlp=True, hidden_act='silu'))):  # the "plus" models
    model = DINOv3ViTModel(config)
    _randomise(model, 21 + len(name))
    model.eval()
    image = _image(4, 64)
    with torch.no_grad():
      o = model(pixel_values=image, output_hidden_states=True)
      x = model.embeddings(image)
      rope = model.rope_embeddings(image)
      for layer in model.model.layer:
        x = layer(x, position_embeddings=rope)
      np.testing.assert_allclose(model.norm(x).numpy(), o.last_hidden_state.numpy(), atol=1e-6)
    model.save_pretrained(os.path.join(out, name), safe_serialization=True)
    _save(out, name, image, x[:, 5:], o.last_hidden_state[:, 5:], o.last_hidden_state[:, 0])


def timm_dinov3(out):
  from functools import partial

  from safetensors.torch import save_file
  from timm.layers import LayerNorm
  from timm.models.eva import Eva
  # As timm's vit_*_patch16_dinov3(_qkvb) constructors build them, at a small size.
  common = dict(img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2, init_values=1e-5, rope_type='dinov3',
                rope_temperature=100, rope_rotate_half=True, use_rot_pos_emb=True, use_abs_pos_emb=False,
                num_reg_tokens=4, use_fc_norm=False, norm_layer=partial(LayerNorm, eps=1e-5), num_classes=0,
                global_pool='token', dynamic_img_size=True)
  for name, model in (
      ('timm_dinov3', Eva(**common, qkv_bias=True)),  # _qkvb: q and v biases, k fixed at zero
      ('timm_dinov3_swiglu', Eva(**common, qkv_bias=False, swiglu_mlp=True, swiglu_align_to=8, mlp_ratio=4.0))):
    _randomise(model, 31 + len(name))
    model.eval()
    image = _image(5, 64)
    with torch.no_grad():
      x = model.patch_embed(image)
      x, rope = model._pos_embed(x)
      x = model.norm_pre(x)
      for block in model.blocks:
        x = block(x, rope=rope)
      normed = model.norm(x)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f'{name}.safetensors'))
    _save(out, name, image, x[:, 5:], normed[:, 5:], normed[:, 0])


def timm_resnets(out):
  from safetensors.torch import save_file
  from timm.models.resnet import Bottleneck, ResNet
  for name, stem in (('timm_resnet', ''), ('timm_resnet_deep', 'deep')):
    model = ResNet(Bottleneck, [1, 1, 1, 1], channels=(8, 16, 32, 64), stem_width=8, stem_type=stem, num_classes=0)
    _randomise(model, 41 + len(stem))
    with torch.no_grad():  # running statistics as a trained network has them (variances positive)
      for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          m.running_mean.copy_(torch.randn(m.running_mean.shape) * 0.1)
          m.running_var.copy_(torch.rand(m.running_var.shape) + 0.5)
    model.eval()
    image = _image(6, 64)
    feats = {}
    with torch.no_grad():
      x = model.maxpool(model.act1(model.bn1(model.conv1(image))))
      for i in range(1, 5):
        x = getattr(model, f'layer{i}')(x)
        feats[f'layer{i}'] = x.permute(0, 2, 3, 1).numpy()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f'{name}.safetensors'))
    np.savez(os.path.join(out, f'{name}.npz'), image=image.permute(0, 2, 3, 1).numpy(), **feats)


def timm_models(out):
  import timm  # noqa: F401
  from safetensors.torch import save_file
  from timm.models.vision_transformer import VisionTransformer
  common = dict(img_size=56, patch_size=14, embed_dim=64, depth=4, num_heads=2, init_values=1e-5,
                num_classes=0, global_pool='token')
  for name, model, regs in (
      ('timm_dinov2', VisionTransformer(**common), 0),
      ('timm_dinov2_reg', VisionTransformer(**common, reg_tokens=4, no_embed_class=True), 4)):
    _randomise(model, 11 + regs)
    model.eval()
    image = _image(3)
    with torch.no_grad():
      x = model.patch_embed(image)
      x = model._pos_embed(x)
      x = model.norm_pre(x)
      for block in model.blocks:
        x = block(x)
      normed = model.norm(x)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f'{name}.safetensors'))
    _save(out, name, image, x[:, 1 + regs:], normed[:, 1 + regs:], normed[:, 0])


def main(out):
  import timm
  import transformers
  os.makedirs(out, exist_ok=True)
  transformers_models(out)
  timm_models(out)
  transformers_dinov3(out)
  timm_dinov3(out)
  timm_resnets(out)
  with open(os.path.join(out, 'versions.txt'), 'w') as f:
    f.write(f'torch {torch.__version__}\ntransformers {transformers.__version__}\ntimm {timm.__version__}\n')


if __name__ == '__main__':
  main(sys.argv[1])
