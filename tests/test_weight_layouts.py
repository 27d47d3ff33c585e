"""DINOv2 weights as transformers and timm save them (issue 37), proven with files those libraries
wrote: tests/golden/make_hf_timm_golden.py (transformers' save_pretrained, timm's state dict through
safetensors.torch.save_file, random weights, their own outputs in .npz)."""

import json
import os
import struct

import jax
import numpy as np
import pytest

from mmtjax.models import backbones
from mmtjax.weights import convert, dinov2_layouts, files
from mmtjax.weights.torch_pth import WeightsError

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'layouts')
TOL = 2e-5
CASES = [('hf_dinov2', 'dinov2_golden14', 'transformers'), ('hf_dinov2_reg', 'dinov2_golden14_reg', 'transformers'),
         ('timm_dinov2', 'dinov2_golden14', 'meta'), ('timm_dinov2_reg', 'dinov2_golden14_reg', 'timm')]


def _path(name):
  folder = os.path.join(GOLDEN, name)
  return folder if os.path.isdir(folder) else folder + '.safetensors'


def _load(name, spec):
  model = backbones.get_backbone(spec)
  x = np.zeros((1, 56, 56, 3), np.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x, method=_outputs))
  return model, convert.load_backbone(_path(name), {'params': {'encoder': template['params']}}, model)


def _outputs(m, x):
  out = m(x)
  return out['layer4'], m.readout(out['layer4']), m.cls(out)


@pytest.mark.parametrize('name,spec,kind', CASES, ids=[c[0] for c in CASES])
def test_files_the_libraries_wrote_give_their_outputs(name, spec, kind):
  golden = np.load(os.path.join(GOLDEN, f'{name}.npz'))
  assert dinov2_layouts.layout(files.read(_path(name))) == kind
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
