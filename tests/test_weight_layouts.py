"""DINOv2, DINOv3 and ResNet weights as transformers and timm save them (issue 37), proven with files
those libraries wrote: tests/golden/make_hf_timm_golden.py (transformers' save_pretrained, timm's
state dict through safetensors.torch.save_file, random weights, their own outputs in .npz)."""

import json
import os
import struct

import jax
import numpy as np
import pytest

from mmtjax.models import backbones
from mmtjax.weights import convert, dinov2_layouts, dinov3_layouts, files, resnet_layouts
from mmtjax.weights.torch_pth import WeightsError

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'layouts')
TOL = 2e-5
CASES = [('hf_dinov2', 'dinov2_golden14', 'transformers'), ('hf_dinov2_reg', 'dinov2_golden14_reg', 'transformers'),
         ('timm_dinov2', 'dinov2_golden14', 'meta'), ('timm_dinov2_reg', 'dinov2_golden14_reg', 'timm'),
         ('hf_dinov3', 'dinov3_golden16', 'transformers'), ('hf_dinov3_swiglu', 'dinov3_golden16_swiglu', 'transformers'),
         ('timm_dinov3', 'dinov3_golden16', 'timm'), ('timm_dinov3_swiglu', 'dinov3_golden16_swiglu', 'timm')]
LAYOUTS = {'dinov2': dinov2_layouts, 'dinov3': dinov3_layouts}


def _path(name):
  folder = os.path.join(GOLDEN, name)
  return folder if os.path.isdir(folder) else folder + '.safetensors'


def _load(name, spec):
  model = backbones.get_backbone(spec)
  x = np.zeros((1, 4 * model.spec.patch, 4 * model.spec.patch, 3), np.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x, method=_outputs))
  return model, convert.load_backbone(_path(name), {'params': {'encoder': template['params']}}, model)


def _outputs(m, x):
  out = m(x)
  return out['layer4'], m.readout(out['layer4']), m.cls(out)


@pytest.mark.parametrize('name,spec,kind', CASES, ids=[c[0] for c in CASES])
def test_files_the_libraries_wrote_give_their_outputs(name, spec, kind):
  golden = np.load(os.path.join(GOLDEN, f'{name}.npz'))
  assert LAYOUTS[spec[:6]].layout(files.read(_path(name))) == kind
  model, variables = _load(name, spec)
  raw, normed, cls = jax.jit(lambda v, x: model.apply(v, x, method=_outputs))(
      {'params': variables['params']['encoder']}, golden['image'])
  worst = 0.0
  for got, key in ((raw, 'raw'), (normed, 'normed'), (cls, 'cls')):
    want = golden[key]
    got = np.asarray(got).reshape(want.shape)
    worst = max(worst, float(np.max(np.abs(got - want))) / max(1.0, float(np.max(np.abs(want)))))
  print(f'{name}: max error {worst:.2e} relative to max(1, |output|)')
  assert worst < TOL


def test_the_same_weights_in_every_layout_give_the_same_parameters():
  """transformers' file, mapped to Meta's names and back through the loader, equals loading the
  Meta-named dict written out by hand (the inverse mapping)."""
  state = files.read(_path('hf_dinov2'))
  meta, kind = dinov2_layouts.to_meta(state)
  assert kind == 'transformers' and 'blocks.3.attn.qkv.weight' in meta
  q, k, v = (state[f'encoder.layer.3.attention.attention.{p}.weight'] for p in ('query', 'key', 'value'))
  np.testing.assert_array_equal(meta['blocks.3.attn.qkv.weight'], np.concatenate([q, k, v]))
  np.testing.assert_array_equal(meta['blocks.0.ls1.gamma'], state['encoder.layer.0.layer_scale1.lambda1'])
  timm_state = files.read(_path('timm_dinov2_reg'))
  timm_meta, _ = dinov2_layouts.to_meta(timm_state)
  assert timm_meta['pos_embed'].shape[1] == timm_state['pos_embed'].shape[1] + 1  # the cls slot, zero
  assert not np.any(timm_meta['pos_embed'][:, 0]) and 'register_tokens' in timm_meta


def test_a_users_path_a_snapshot_folder_and_bad_files_are_one_line(tmp_path):
  """The snapshot folder (config.json + model.safetensors) and the file in it both load; an
  unknown layout, a wrong size, a header that lies about its sizes: one line each."""
  model, _ = _load('hf_dinov2', 'dinov2_golden14')
  x = np.zeros((1, 56, 56, 3), np.float32)
  template = {'params': {'encoder': jax.eval_shape(lambda: model.init(jax.random.key(0), x,
                                                                      method=_outputs))['params']}}
  folder = os.path.join(GOLDEN, 'hf_dinov2')
  a = convert.load_backbone(folder, template, model)
  b = convert.load_backbone(os.path.join(folder, 'model.safetensors'), template, model)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  from safetensors.numpy import save_file
  unknown = str(tmp_path / 'unknown.safetensors')
  save_file({'backbone.stem.weight': np.zeros((2, 2), np.float32)}, unknown)
  with pytest.raises(WeightsError, match=r'match none of the DINOv2 layouts \(Meta .*transformers .*timm'):
    convert.load_backbone(unknown, template, model)
  small = backbones.get_backbone('dinov2_golden14_reg')  # a file without registers into a model with them
  small_template = {'params': {'encoder': jax.eval_shape(lambda: small.init(jax.random.key(0), x,
                                                                            method=_outputs))['params']}}
  with pytest.raises(WeightsError, match=r'register_tokens.* \(read as the transformers layout\)$'):
    convert.load_backbone(folder, small_template, small)
  lying = tmp_path / 'lying.safetensors'
  header = json.dumps({'w': {'dtype': 'F32', 'shape': [1000, 1000], 'data_offsets': [0, 4_000_000]}}).encode()
  lying.write_bytes(struct.pack('<Q', len(header)) + header + b'\0' * 16)
  with pytest.raises(WeightsError, match='damaged or incomplete: its tensors need'):
    files.read(str(lying))
  (tmp_path / 'huge.safetensors').write_bytes(struct.pack('<Q', 10**12) + b'{}')
  with pytest.raises(WeightsError, match='its header claims'):
    files.read(str(tmp_path / 'huge.safetensors'))
  with pytest.raises(WeightsError, match='a folder without model.safetensors'):
    files.read(str(tmp_path))


def test_dinov3_names_map_to_metas_and_the_first_conversions_naming_reads_the_same():
  """transformers' q/k/v projections become one qkv with a zero k bias (Meta masks it); timm's q and
  v biases likewise; the first conversion script's names (layer.N.attention.query, attention.proj,
  layer_scale1.gamma, embeddings.patch_embeddings.proj) give the same parameters as today's."""
  state = files.read(_path('hf_dinov3'))
  meta, kind = dinov3_layouts.to_meta(state)
  assert kind == 'transformers' and 'storage_tokens' in meta
  q, k, v = (state[f'layer.2.attention.{p}_proj.weight'] for p in 'qkv')
  np.testing.assert_array_equal(meta['blocks.2.attn.qkv.weight'], np.concatenate([q, k, v]))
  bias = meta['blocks.2.attn.qkv.bias']
  assert not np.any(bias[64:128]) and np.array_equal(bias[:64], state['layer.2.attention.q_proj.bias'])
  renames = [(r'attention\.q_proj', 'attention.query'),
             (r'attention\.k_proj', 'attention.key'), (r'attention\.v_proj', 'attention.value'),
             (r'attention\.o_proj', 'attention.proj'), (r'\.lambda1$', '.gamma'), (r'mlp\.up_proj', 'mlp.fc1'),
             (r'mlp\.down_proj', 'mlp.fc2'), (r'^embeddings\.patch_embeddings\.', 'embeddings.patch_embeddings.proj.')]
  import re
  first = {}
  for key, value in state.items():
    for pattern, repl in renames:
      key = re.sub(pattern, repl, key)
    first[key] = value
  assert 'layer.0.attention.query.weight' in first and dinov3_layouts.layout(first) == 'transformers'
  in_memory = {re.sub(r'^layer\.', 'model.layer.', k): v for k, v in state.items()}  # DINOv3ViTModel.state_dict()
  for other in (first, in_memory):
    again, _ = dinov3_layouts.to_meta(other)
    assert sorted(again) == sorted(meta)
    for key in meta:
      np.testing.assert_array_equal(again[key], meta[key])
  timm = files.read(_path('timm_dinov3'))
  timm_meta, _ = dinov3_layouts.to_meta(timm)
  bias = timm_meta['blocks.1.attn.qkv.bias']
  np.testing.assert_array_equal(bias, np.concatenate([timm['blocks.1.attn.q_bias'], np.zeros(64),
                                                      timm['blocks.1.attn.v_bias']]))
  no_bias, _ = dinov3_layouts.to_meta(files.read(_path('timm_dinov3_swiglu')))  # qkv_bias=False: zero
  assert not np.any(no_bias['blocks.0.attn.qkv.bias']) and 'blocks.0.mlp.w3.weight' in no_bias


@pytest.mark.parametrize('name,stem', [('timm_resnet', None), ('timm_resnet_deep', 'deep')])
def test_timm_resnets_give_their_outputs(name, stem):
  """timm's plain-stem ResNet is torchvision's names; its deep stem (conv1.0-6, bn1) is PSPNet's
  conv1-3 / bn1-3 (model.stem=deep). Stage outputs in eval mode, output stride 32."""
  golden = np.load(os.path.join(GOLDEN, f'{name}.npz'))
  state = files.read(_path(name))
  assert resnet_layouts.layout(state) == ('timm-deep' if stem else 'torchvision')
  model = backbones.get_backbone('resnet_golden', stem=stem, output_stride=32)
  x = golden['image']
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train_bn=False))
  loaded = convert.load_backbone(_path(name), {c: {'encoder': template[c]} for c in template}, model)
  variables = {c: loaded[c]['encoder'] for c in loaded}
  out = jax.jit(lambda v, x: model.apply(v, x, train_bn=False))(variables, x)
  worst = 0.0
  for stage in ('layer1', 'layer2', 'layer3', 'layer4'):
    want = golden[stage]
    worst = max(worst, float(np.max(np.abs(np.asarray(out[stage]) - want))) / max(1.0, float(np.max(np.abs(want)))))
  print(f'{name}: max error {worst:.2e} relative to max(1, |output|)')
  assert worst < TOL
  wrong = backbones.get_backbone('resnet_golden', stem=None if stem else 'deep', output_stride=32)
  template = jax.eval_shape(lambda: wrong.init(jax.random.key(0), x, train_bn=False))
  with pytest.raises(WeightsError, match=r'\(read as the (timm-deep|torchvision) layout\)$'):
    convert.load_backbone(_path(name), {c: {'encoder': template[c]} for c in template}, wrong)
  for layouts, family in ((resnet_layouts, 'ResNet'), (dinov3_layouts, 'DINOv3')):  # a ViT file, a CNN file
    other = files.read(_path('timm_dinov2' if layouts is resnet_layouts else name))
    with pytest.raises(WeightsError, match=f'match none of the {family} layouts .*; first keys: '):
      layouts.layout(other)


CLI_CASES = [('hf_dinov2', 'dinov2_golden14', None),  # a Hugging Face snapshot folder
             ('~/hf_dinov3/model.safetensors', 'dinov3_golden16', None),  # the file in it, typed with ~
             ('timm_dinov3_swiglu', 'dinov3_golden16_swiglu', None),
             ('timm_resnet_deep', 'resnet_golden', 'deep')]


@pytest.mark.parametrize('name,backbone,stem', CLI_CASES, ids=[c[0].split('/')[-2 if '/' in c[0] else 0]
                                                               for c in CLI_CASES])
def test_each_layout_through_the_command_line(name, backbone, stem, tmp_path, monkeypatch, capsys):
  """A user types the path (a folder, a file, ~), nothing else: predict's --pretrained segments with it."""
  from PIL import Image

  from mmtjax.commands.predict import main
  monkeypatch.setenv('HOME', GOLDEN)  # ~ is the golden folder here
  path = name if name.startswith('~') else _path(name)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
  mask = np.zeros((40, 48), np.uint8)
  mask[8:30, 10:36] = 255
  Image.fromarray(image).save(tmp_path / 's.png')
  Image.fromarray(mask).save(tmp_path / 'm.png')
  cfg = tmp_path / 'golden_prototype.py'  # a user's config over configs/default.py: a depth-4 ViT's stages
  cfg.write_text('from configs import default\n\n\ndef get_config(arg=None):\n  c = default.get_config(arg)\n'
                 f'  c.model.vit_blocks, c.model.vit_norm, c.model.stem = None, True, {stem!r}\n  return c\n')
  out = tmp_path / 'q_mask.png'
  size = '32' if backbone.startswith('resnet') else '64'  # a 4 x 4 grid of /14 or /16 tokens at least
  main(['--config', f'{cfg}:model=prototype', '--backbone', backbone, '--pretrained', path, '--image_size', size,
        '--support', f'{tmp_path / "s.png"}:{tmp_path / "m.png"}', '--query', str(tmp_path / 's.png'),
        '--out', str(out)])
  assert f'{out}: ' in capsys.readouterr().out
  written = np.asarray(Image.open(out))
  assert written.shape == (40, 48) and set(np.unique(written)) <= {0, 255}
