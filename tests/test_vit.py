"""DINOv2 / DINOv3 ViTs equal Meta's code on golden files its code wrote (tests/golden/make_vit_golden.py)."""

import os

import jax
import numpy as np
import pytest

from mmtjax.models import vit
from mmtjax.weights import torch_pth
from mmtjax.weights import vit as vit_weights

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden', 'vit')

# The golden configurations (make_vit_golden.CONFIGS) as ViTSpecs.
SPECS = {
    'dinov2_tiny': vit.ViTSpec('dinov2', 14, 64, 4, 2, pos_grid=4, antialias=False, offset=0.1),
    'dinov2_tiny_reg4_swiglu': vit.ViTSpec('dinov2', 14, 64, 4, 2, ffn='swiglu_fused', registers=4,
                                           pos_grid=4, antialias=True, offset=0.0),
    'dinov3_tiny_reg4': vit.ViTSpec('dinov3', 16, 64, 4, 2, registers=4, ln_eps=1e-5),
    'dinov3_tiny_reg4_swiglu': vit.ViTSpec('dinov3', 16, 64, 4, 2, ffn='swiglu', ffn_ratio=6.0,
                                           registers=4, ln_eps=1e-5),
}
TOL = 2e-5  # float32; the largest error seen is printed by the test


def _run(model, variables, x):
  def fwd(m, x):
    out = m(x)
    return ({s: out[s] for s in vit.STAGES[1:]}, {s: m.readout(out[s]) for s in vit.STAGES[1:]},
            m.cls(out))
  return jax.jit(lambda v, x: model.apply(v, x, method=fwd))(variables, x)


@pytest.mark.parametrize('name,attention', [(n, 'fused') for n in sorted(SPECS)]
                         + [('dinov3_tiny_reg4', 'plain')])
def test_golden_equality(name, attention):
  spec = SPECS[name]
  model = vit.VisionTransformer(spec, attention=attention)
  golden = np.load(os.path.join(GOLDEN, f'{name}.npz'))
  x0 = golden['input_0']
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x0[:1], method=_init_all))
  params = vit_weights.vit_from_torch(torch_pth.load_state_dict(os.path.join(GOLDEN, f'{name}.pth')),
                                      {'params': template['params']}, spec)
  worst = absolute = 0.0
  for i in range(2):
    if f'input_{i}' not in golden:
      continue
    raw, normed, cls = _run(model, params, golden[f'input_{i}'])
    for s in vit.STAGES[1:]:
      for got, key in ((raw[s], f'raw_{i}_{s}'), (normed[s], f'norm_{i}_{s}')):
        err = float(np.max(np.abs(np.asarray(got) - golden[key])))
        absolute = max(absolute, err)
        worst = max(worst, err / max(1.0, float(np.max(np.abs(golden[key])))))
    worst = max(worst, float(np.max(np.abs(np.asarray(cls) - golden[f'cls_{i}']))))
  print(f'{name} ({attention}): max abs error {absolute:.2e}, {worst:.2e} relative to max(1, |output|)')
  assert worst < TOL


def _init_all(m, x):
  out = m(x)
  return m.readout(out['layer4']), m.cls(out)


# --- the ViTs under every method, loaded from Meta-layout files ----------------------------------

def _meta_state_dict(params, seed=0):
  """A random state dict in Meta's key layout and torch shapes for a ViT's Flax params
  (the inverse of weights.vit's mapping; DINOv3 files also carry the qkv bias_mask)."""
  rng, state = np.random.default_rng(seed), {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [p.key for p in path]
    key = vit_weights._torch_key(keys)
    shape = x.shape
    if keys[-1] == 'kernel':
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    state[key] = (0.02 * rng.normal(size=shape)).astype(np.float32)
    if key.endswith('attn.qkv.bias'):
      state[key.replace('.bias', '.bias_mask')] = np.ones(shape, np.float32)
  state['mask_token'] = np.zeros((1, state['cls_token'].shape[-1]), np.float32)
  return state


def _leaf(params, dotted):
  node = params
  for k in dotted.split('/'):
    node = node[k]
  return np.asarray(node)


@pytest.mark.parametrize('method,backbone', [('mmt', 'dinov2_tiny_reg'), ('baseline', 'dinov2_tiny'),
                                             ('mmnet', 'dinov3_tiny')])
def test_every_method_trains_and_evaluates_on_a_frozen_vit_from_a_meta_file(tfds_dir, tmp_path, method,
                                                                           backbone):
  import math

  from mmtjax import checkpointing, methods, sweeps, train_lib
  from mmtjax.models import get_model
  from mmtjax.state import create_train_state
  from tests.conftest import tiny_config
  from tests.test_weights import write_pth
  config = tiny_config(tfds_dir, f'model={method}')
  config.model.backbone = backbone
  config.train.num_steps = 2
  config.eval.num_episodes = 4
  template = jax.eval_shape(lambda: create_train_state(get_model(config), config)[0]).params['encoder']
  state_dict = _meta_state_dict(template)
  config.model.pretrained = str(tmp_path / f'{backbone}_pretrain.pth')
  write_pth(config.model.pretrained, state_dict)
  workdir = str(tmp_path / 'run')
  train_lib.train(config, workdir)
  saved = checkpointing.Checkpoints(workdir, create=False).restore_raw()
  encoder = saved['params']['encoder']
  # Frozen by default: after two steps the backbone still holds the file's tensors.
  np.testing.assert_array_equal(_leaf(encoder, 'blocks_1/mlp/fc1/kernel'), state_dict['blocks.1.mlp.fc1.weight'].T)
  np.testing.assert_array_equal(_leaf(encoder, 'patch_embed/proj/kernel'),
                                np.transpose(state_dict['patch_embed.proj.weight'], (2, 3, 1, 0)))
  assert 'encoder' not in saved['model_state'].get('batch_stats', {})  # no BatchNorm in a ViT
  report = sweeps.evaluate(config, workdir)
  assert set(report['results']) == set(methods.get(method).eval_modes)
  assert all(math.isfinite(r['miou']) for r in report['results'].values())
  if method == 'mmt':  # The memory learnt source styles of the ViT's tokens.
    assert np.std(np.asarray(saved['model_state']['memory']['style_memory']['means'])) > 0
  if method == 'mmnet':  # MM-Net's three loss terms reach the training log.
    import json
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f]
    assert {'loss_main', 'loss_aux', 'loss_recon'} <= set(records[0])


def test_mmt_memory_restyles_the_vits_patch_tokens_and_passes_its_prefix_tokens_on(tfds_dir):
  """Target transfer on a ViT, against a reference composed by hand: the memory sees the layer1
  patch tokens only (channel statistics against numpy), the re-styled tokens follow the numpy
  restyle formula with the item the memory picks, and layer2 onwards runs on them with the
  cls and register tokens as layer1 left them."""
  import jax.numpy as jnp

  from mmtjax import methods
  from mmtjax.models import backbones
  from mmtjax.models.style_memory import StyleMemory
  from tests.conftest import tiny_config
  config = tiny_config(tfds_dir)
  config.model.backbone = 'dinov2_tiny_reg'
  mem = config.memory
  model = methods.get('mmt').build(config)
  images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  variables = model.init({'params': jax.random.key(0)}, images[None, :1], np.zeros((1, 1, 32, 32), np.uint8),
                         images[:1], train=False)
  rng = np.random.default_rng(1)
  bank = dict(variables['memory']['style_memory'])
  bank.update(means=rng.normal(size=bank['means'].shape).astype(np.float32),
              stds=rng.uniform(0.5, 2.0, size=bank['stds'].shape).astype(np.float32), initialized=np.float32(1))
  variables = {**variables, 'memory': {'style_memory': bank}}

  emb, _, diag = model.apply(variables, images, method=lambda m, x: m._encode(x, train=False, restyle='target',
                                                                            episodes=1))
  encoder = backbones.get_backbone('dinov2_tiny_reg')
  enc_vars = {'params': variables['params']['encoder']}
  low = encoder.apply(enc_vars, images, train_bn=False, stop='layer1')
  f = np.asarray(low['layer1'], np.float64)
  assert f.shape == (3, 4, 4, 32) and low['layer1/prefix'].shape == (3, 5, 32)  # cls + 4 registers
  mu = f.mean(axis=(1, 2))
  std = np.sqrt(((f - mu[:, None, None]) ** 2).mean(axis=(1, 2)) + mem.eps)
  got_mu, got_std = model.apply(variables, images, method='style_stats')
  np.testing.assert_allclose(got_mu, mu, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_std, std, rtol=1e-5, atol=1e-5)
  memory = StyleMemory(num_items=mem.num_items, alpha=mem.alpha, tau=mem.tau, eps=mem.eps,
                       similarity=mem.similarity, assignment=mem.assignment)
  _, aux = memory.apply({'memory': bank}, low['layer1'], domain='target', train=False)
  chosen = np.asarray(aux['item'])
  per_image = np.asarray(diag['histograms']['memory_item_target'])  # one episode of 3 images
  np.testing.assert_array_equal(per_image[0], np.bincount(chosen, minlength=mem.num_items))
  a = mem.alpha
  restyled = ((f - mu[:, None, None]) / std[:, None, None] * (a * std + (1 - a) * bank['stds'][chosen])[:, None, None]
              + (a * mu + (1 - a) * bank['means'][chosen])[:, None, None])
  rest = encoder.apply(enc_vars, jnp.asarray(restyled, jnp.float32), train_bn=False, start='layer2', stop='layer3',
                       prefix=low['layer1/prefix'])
  x = jnp.concatenate([encoder.apply(enc_vars, rest[s], method='readout') for s in ('layer2', 'layer3')], -1)
  want = jax.nn.relu(jnp.einsum('bhwc,cd->bhwd', x, variables['params']['neck']['kernel'][0, 0]))
  np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4)


def _encoder_variables(name):
  from mmtjax.models import backbones
  model = backbones.get_backbone(name)
  x = np.zeros((1, 32, 32, 3), np.float32)
  return model, {'params': {'encoder': jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, method=_init_all))['params']}}


@pytest.mark.parametrize('source,target,expected', [
    # Another family: DINOv3's file has RoPE periods and bias masks DINOv2 lacks, and no pos_embed.
    ('dinov3_tiny', 'dinov2_tiny', 'the weights have no pos_embed'),
    ('dinov2_tiny', 'dinov3_tiny', 'the weights have no storage_tokens'),
    # The same family at another size (ViT-S/14 file into ViT-B/14): the first tensor mis-shaped.
    ('dinov2_vits14', 'dinov2_vitb14', 'has shape .* the model needs'),
    # With registers into a model without them: the register tokens are unused.
    ('dinov2_tiny_reg', 'dinov2_tiny', 'match no backbone variable, e.g. register_tokens'),
])
def test_a_vit_file_of_another_family_or_size_is_one_line_naming_the_tensor(tmp_path, source, target,
                                                                            expected):
  from mmtjax.weights import convert
  from tests.test_weights import write_pth
  _, src = _encoder_variables(source)
  path = str(tmp_path / f'{source}.pth')
  write_pth(path, _meta_state_dict(src['params']['encoder']))
  model, variables = _encoder_variables(target)
  with pytest.raises(torch_pth.WeightsError, match=expected) as err:
    convert.load_backbone(path, variables, model)
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('kind', ['os.system', 'eval'])
def test_a_vit_weights_file_with_a_pickled_payload_runs_nothing(tmp_path, kind):
  import collections
  import pickle
  import zipfile

  from mmtjax.weights import convert
  from tests.test_weights import _Payload
  marker = str(tmp_path / 'ran')
  path = str(tmp_path / 'dinov2_vits14_pretrain.pth')
  with zipfile.ZipFile(path, 'w') as z:  # a zip-layout file, as torch.save writes Meta's
    z.writestr('archive/data.pkl', pickle.dumps(
        collections.OrderedDict(cls_token=_Payload(kind, marker)), protocol=2))
  model, variables = _encoder_variables('dinov2_tiny')
  with pytest.raises(torch_pth.WeightsError, match='unsupported object') as err:
    convert.load_backbone(path, variables, model)
  assert not os.path.exists(marker) and '\n' not in str(err.value)
