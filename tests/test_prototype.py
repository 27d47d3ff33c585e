"""Training-free prototype matching, and complete DINOv2 files in every method's config.

The weights are tests/golden/vit/dinov2_tiny.pth, written by Meta's own code
(tests/golden/make_vit_golden.py): a complete file of the `dinov2_golden14`
architecture (4 blocks), loaded into configs that run fewer of them.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax import methods, ops
from mmtjax.state import untrained_variables, with_pretrained
from mmtjax.weights import torch_pth
from tests.conftest import state_like, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, 'tests', 'golden', 'vit')
FILE = os.path.join(GOLDEN, 'dinov2_tiny.pth')  # Meta's DinoVisionTransformer, depth 4, width 64


def _config(tfds_dir, model, **fields):
  config = tiny_config(tfds_dir, f'model={model}')
  with config.unlocked():
    config.model.backbone = 'dinov2_golden14'
    config.model.pretrained = FILE
    config.data.image_size = 56  # 4 x 4 patches of 14, the least a ViT takes
    if model == 'prototype':  # its default reads block 10 of a 12-block ViT; this one has 4
      config.model.vit_blocks, config.model.vit_norm = None, True
    for key, value in fields.items():
      config.model[key] = value
  return config


@pytest.mark.parametrize('model,fields,unused', [
    ('mmt', {}, 'blocks.3'),  # reads layer2, layer3: block 4 of 4 never runs
    ('mmt', {'vit_norm': False, 'feature_stages': ('layer2',), 'memory_stage': 'layer1'}, 'blocks.2-3 and norm'),
    ('baseline', {}, 'blocks.3'),
    ('mmnet', {}, 'blocks.3'),  # the CPU MM-Net's prior reads layer3
    ('prototype', {}, None),  # layer4 = block 4: the whole file
    ('prototype', {'feature_stages': ('layer2',), 'vit_norm': False}, 'blocks.2-3 and norm'),
    ('prototype', {'vit_blocks': (1, 2, 3, 4), 'feature_stages': ('layer1', 'layer3')}, 'blocks.3'),
])
def test_a_complete_meta_file_loads_into_every_method_that_runs_fewer_blocks(tfds_dir, model, fields, unused):
  from mmtjax.models import backbones
  from mmtjax.weights import convert
  config = _config(tfds_dir, model, **fields)
  net = methods.for_config(config).build(config)
  s = config.data.image_size
  shapes = jax.eval_shape(lambda: net.init({'params': jax.random.key(0)}, jnp.zeros((1, 1, s, s, 3)),
                                           jnp.zeros((1, 1, s, s), jnp.uint8), jnp.zeros((1, s, s, 3)), train=False))
  template = {'params': jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes['params']), 'batch_stats': {}}
  notes = []
  loaded = convert.load_backbone(FILE, template, backbones.get_backbone(config.model.backbone), note=notes.append)
  if unused is None:
    assert notes == []
  else:
    assert len(notes) == 1 and f'({unused})' in notes[0] and 'left unused' in notes[0], notes
  # The blocks it runs carry the file's tensors (Linear [out, in] -> Dense kernel [in, out]).
  sd = torch_pth.load_state_dict(FILE)
  enc = loaded['params']['encoder']
  np.testing.assert_array_equal(enc['blocks_0']['attn']['qkv']['kernel'], sd['blocks.0.attn.qkv.weight'].T)
  np.testing.assert_array_equal(enc['blocks_1']['mlp']['fc2']['bias'], sd['blocks.1.mlp.fc2.bias'])


def test_a_file_of_another_architecture_still_names_its_first_bad_tensor(tfds_dir):
  config = _config(tfds_dir, 'prototype', feature_stages=('layer2',))
  config.model.pretrained = os.path.join(GOLDEN, 'dinov2_tiny_reg4_swiglu.pth')  # registers, SwiGLU
  state = state_like(config, methods.for_config(config).build(config))
  with pytest.raises(torch_pth.WeightsError) as err:
    with_pretrained(state, config)
  assert '\n' not in str(err.value) and 'blocks.0.mlp' in str(err.value)
  # A DINOv3 file (patch 16) into a DINOv2 model (patch 14): its first mis-shaped tensor.
  config.model.pretrained = os.path.join(GOLDEN, 'dinov3_tiny_reg4.pth')
  with pytest.raises(torch_pth.WeightsError, match=r'patch_embed\.proj\.weight has shape \(16, 16, 3, 64\)'):
    with_pretrained(state, config)


def test_an_unused_tail_block_of_the_wrong_shape_is_an_error(tfds_dir, tmp_path):
  from tests.test_weights import write_pth
  sd = dict(torch_pth.load_state_dict(FILE))
  sd['blocks.3.mlp.fc1.weight'] = np.zeros((8, 64), np.float32)  # the block the model never runs
  path = str(tmp_path / 'bad_tail.pth')
  write_pth(path, sd)
  config = _config(tfds_dir, 'prototype', feature_stages=('layer2',))
  config.model.pretrained = path
  state = state_like(config, methods.for_config(config).build(config))
  with pytest.raises(torch_pth.WeightsError, match=r'blocks\.3\.mlp\.fc1\.weight has shape'):
    with_pretrained(state, config)


def test_vit_blocks_must_be_four_ascending_counts(tfds_dir):
  from mmtjax.errors import UserError
  from mmtjax.models import backbones
  with pytest.raises(UserError, match='four ascending block counts in 1..12'):
    backbones.get_backbone('dinov2_vits14', vit_blocks=(3, 6, 6, 10))
  with pytest.raises(UserError, match='in 1..4'):
    backbones.get_backbone('dinov2_golden14', vit_blocks=(1, 2, 3, 5))


def _reference(feats, labels, b, k):
  """numpy: masked average pooling per shot, the shots' mean, cosine of each query token."""
  n, h, w, d = feats.shape
  fg, valid = (np.asarray(a) for a in ops.binary_masks(jnp.asarray(labels.reshape(b * k, *labels.shape[2:]))))
  fg_s = np.asarray(ops.resize_mask(jnp.asarray(fg), (h, w)))
  bg_s = np.asarray(ops.resize_mask(jnp.asarray(valid - fg), (h, w)))
  sup = feats[:b * k]
  out = np.zeros((b, h, w, 2))
  for e in range(b):
    protos = []
    for m in (bg_s, fg_s):
      per_shot = [(sup[e * k + s] * m[e * k + s][..., None]).sum((0, 1)) / (m[e * k + s].sum() + 1e-6)
                  for s in range(k)]
      protos.append(np.mean(per_shot, axis=0))
    q = feats[b * k + e]
    for c, p in enumerate(protos):
      out[e, ..., c] = (q @ p) / (np.linalg.norm(q, axis=-1) * np.linalg.norm(p) + 1e-8)
  return out


@pytest.mark.parametrize('k,stages', [(1, ('layer4',)), (3, ('layer4',)), (2, ('layer2', 'layer4'))])
def test_prototype_matches_a_numpy_reference(tfds_dir, k, stages):
  config = _config(tfds_dir, 'prototype', feature_stages=stages, cosine_scale=7.0)
  model = methods.for_config(config).build(config)
  variables = untrained_variables(model, config)
  rng = np.random.default_rng(0)
  b, s = 2, 42  # 3 x 3 tokens of patch 14
  support = rng.normal(size=(b, k, s, s, 3)).astype(np.float32)
  query = rng.normal(size=(b, s, s, 3)).astype(np.float32)
  labels = np.zeros((b, k, s, s), np.uint8)
  labels[:, :, 5:30, 10:35] = 1
  labels[:, :, :3] = 255  # ignored: neither foreground nor background
  out = model.apply(variables, support, labels, query, train=False)['logits']

  def feats(m, x, stage):
    return m.encoder.readout(m.encoder(x, train_bn=False)[stage])

  images = np.concatenate([support.reshape(b * k, s, s, 3), query])
  expected = np.mean([_reference(np.asarray(model.apply(variables, images, stage, method=feats), np.float64),
                                 labels, b, k) for stage in stages], axis=0)
  np.testing.assert_allclose(np.asarray(out), 7.0 * expected, atol=2e-4)


def _cli(args, env_extra, cwd):
  env = {**os.environ, **env_extra, 'PYTHONPATH': ROOT}
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_evaluate_runs_prototype_with_no_checkpoint_and_train_refuses_it_in_one_line(tfds_dir, tmp_path):
  workdir = tmp_path / 'absent' / 'w'
  common = ['--config', os.path.join(ROOT, 'configs', 'default.py') + ':model=prototype',
            '--config.model.backbone=dinov2_golden14', f'--config.model.pretrained={FILE}',
            '--config.model.vit_blocks=1,2,3,4', '--config.model.vit_norm=True',
            f'--config.data.data_dir={tfds_dir}', '--config.data.builder_config=tiny',
            '--config.data.image_size=56', '--config.data.min_pixels=4', '--config.eval.num_episodes=8',
            '--config.eval.batch_size=4', f'--workdir={workdir}']
  train = _cli([os.path.join(ROOT, 'train.py'), *common], {}, str(tmp_path))
  assert train.returncode == 2, train.stderr
  lines = [x for x in train.stderr.splitlines() if x.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: model prototype is training-free'), train.stderr
  assert not workdir.exists()  # nothing created before the refusal
  ev = _cli([os.path.join(ROOT, 'evaluate.py'), *common], {}, str(tmp_path))
  assert ev.returncode == 0, ev.stderr[-3000:]
  assert 'prototype' in ev.stdout and 'mIoU' in ev.stdout
  reports = os.listdir(workdir / 'reports')
  assert reports and reports[0].startswith('pretrained_') and 'report.json' in os.listdir(workdir / 'reports' / reports[0])
  assert f"wrote {workdir / 'reports' / reports[0] / 'report.json'}" in ev.stdout


def test_predict_builds_prototype_from_its_config_in_the_api_and_the_command_line(tfds_dir, tmp_path):
  from mmtjax.commands.predict import main
  from mmtjax.predict import Predictor
  rng = np.random.default_rng(0)
  image = rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)
  image[10:40, 10:30] = (230, 40, 40)
  mask = np.zeros((50, 40), np.uint8)
  mask[10:40, 10:30] = 255
  from configs import default
  config = default.get_config('model=prototype')  # what the command line below builds
  config.model.update(backbone='dinov2_golden14', pretrained=FILE, vit_blocks=None, vit_norm=True)
  pred = Predictor.from_config(config).segment(image, [image], [mask])
  assert pred.mask.shape == (50, 40) and set(np.unique(pred.mask)) <= {0, 1}
  from PIL import Image
  for name, array in (('s.png', image), ('m.png', mask)):
    Image.fromarray(array).save(tmp_path / name)
  out, shown, prob = tmp_path / 'q_mask.png', tmp_path / 'q_overlay.png', tmp_path / 'q_probability.png'
  cfg_file = tmp_path / 'golden_prototype.py'  # a user's own config file over configs/default.py
  cfg_file.write_text('from configs import default\n\n\ndef get_config(arg=None):\n'
                      '  c = default.get_config(arg)\n  c.model.vit_blocks, c.model.vit_norm = None, True\n'
                      '  return c\n')
  main(['--config', f'{cfg_file}:model=prototype', '--backbone', 'dinov2_golden14',
        '--pretrained', FILE, '--support', f'{tmp_path / "s.png"}:{tmp_path / "m.png"}',
        '--query', str(tmp_path / 's.png'), '--out', str(out), '--overlay', str(shown), '--probability', str(prob)])
  written = np.asarray(Image.open(out))
  assert written.shape == (50, 40) and set(np.unique(written)) <= {0, 255}
  # The overlay: the query where the mask is off, tinted where on; the probability map: 0-255 grey.
  from mmtjax import visualize
  np.testing.assert_array_equal(np.asarray(Image.open(shown)), visualize.overlay(image, written > 0,
                                                                                 visualize.PREDICTION_COLOUR))
  grey = np.asarray(Image.open(prob))
  assert grey.shape == (50, 40) and grey.dtype == np.uint8
  np.testing.assert_array_equal(grey, np.clip(np.round(pred.probability * 255), 0, 255).astype(np.uint8))
  # The same query through the API with the command line's config: the same mask.
  np.testing.assert_array_equal(written > 0, pred.mask > 0)


def test_a_truncated_weights_file_says_it_is_incomplete(tmp_path):
  path = tmp_path / 'dinov2_vits14_pretrain.pth'
  with open(FILE, 'rb') as f:  # Meta's zip archive, cut as an interrupted download leaves it
    path.write_bytes(f.read()[:5000])
  with pytest.raises(torch_pth.WeightsError, match='damaged or incomplete') as err:
    torch_pth.load_state_dict(str(path))
  assert '\n' not in str(err.value)


def test_a_vit_image_size_under_four_patches_and_a_missing_weights_file_are_one_line_each(tfds_dir):
  from mmtjax import config_lib
  from mmtjax.errors import UserError
  config = _config(tfds_dir, 'prototype')
  config.data.image_size = 42
  with pytest.raises(UserError, match='3 x 3 grid of 14 px patches; a ViT needs at least 4 x 4'):
    config_lib.validate(config)
  config.data.image_size = 56
  config.model.pretrained = '~/no/such/dinov2_vits14_pretrain.pth'
  with pytest.raises(UserError, match='model.pretrained ~/no/such/dinov2_vits14_pretrain.pth does not exist'):
    config_lib.validate(config)


# --- per-episode stage choice (HERA's layer choice), gradient-free ----------------------------

def test_leave_one_out_iou_matches_numpy():
  from mmtjax.methods.prototype import leave_one_out_iou
  rng = np.random.default_rng(0)
  b, k, h, d = 2, 3, 6, 5
  feats = rng.normal(size=(b, k, h, h, d)).astype(np.float32)
  labels = (rng.random((b, k, h, h)) > 0.5).astype(np.int32)
  labels[:, :, 0, :2] = 255
  got = np.asarray(leave_one_out_iou(jnp.asarray(feats), jnp.asarray(labels)))
  want = np.zeros(b)
  for e in range(b):
    protos = [[feats[e, j][labels[e, j] == c].mean(0) for c in (0, 1)] for j in range(k)]
    for i in range(k):
      bg, fg = (np.mean([protos[j][c] for j in range(k) if j != i], axis=0) for c in (0, 1))
      cos = [feats[e, i] @ p / (np.linalg.norm(feats[e, i], axis=-1) * np.linalg.norm(p)) for p in (bg, fg)]
      pred, valid = cos[1] > cos[0], labels[e, i] != 255
      truth = labels[e, i] == 1
      want[e] += ((pred & truth & valid).sum() / ((pred | truth) & valid).sum()) / k
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_stage_choice_picks_the_planted_block_and_predicts_with_it_alone():
  """Two shots, four stages of given features: only layer3's tokens tell the object from the
  background (in episode 1 only layer1's); each episode uses the stage its supports vouch for."""
  from mmtjax.methods.prototype import PrototypeMatcher
  rng = np.random.default_rng(1)
  b, k, s, h, d = 2, 2, 28, 2, 8  # 28 px of patch 14: 2 x 2 tokens
  labels = np.zeros((b, k, s, s), np.int32)
  labels[..., :14, :] = 1  # the top row of tokens is the object
  token_fg = np.zeros((b * k + b, h, h), bool)
  token_fg[:, 0] = True
  feats = {}
  for stage in ('layer1', 'layer2', 'layer3', 'layer4'):
    x = rng.normal(size=(b * k + b, h, h, d)).astype(np.float32)
    feats[stage] = x
  planted = {0: 'layer3', 1: 'layer1'}
  for e, stage in planted.items():
    rows = [e * k + j for j in range(k)] + [b * k + e]
    x = feats[stage]
    x[rows] = np.where(token_fg[rows][..., None], np.eye(d)[0] * 3, np.eye(d)[1] * 3) + 0.1 * x[rows]
  si = np.zeros((b, k, s, s, 3), np.float32)
  qi = np.zeros((b, s, s, 3), np.float32)
  model = PrototypeMatcher(backbone='dinov2_tiny', vit_blocks=(1, 2, 3, 4), vit_norm=False,
                           feature_stages=('layer1', 'layer2', 'layer3', 'layer4'), choose_stages=1)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), si, labels, qi, train=False))
  variables = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)  # no backbone runs: features given
  out = jax.jit(lambda f: model.apply(variables, si, labels, qi, train=False, features=f))(feats)
  scores = np.asarray(out['stage_scores'])
  assert list(scores.argmax(1)) == [2, 0] and np.allclose(scores[[0, 1], [2, 0]], 1.0)
  for e, stage in planted.items():
    alone = PrototypeMatcher(backbone='dinov2_tiny', vit_blocks=(1, 2, 3, 4), vit_norm=False, feature_stages=(stage,))
    want = jax.jit(lambda f, m=alone: m.apply(variables, si, labels, qi, train=False, features=f))(feats)['logits']
    np.testing.assert_allclose(np.asarray(out['logits'][e]), np.asarray(want[e]), atol=1e-5)


def test_one_shot_stage_choice_scores_on_copies_and_does_not_depend_on_the_batch(tfds_dir):
  """One shot: the choice scores on the support and its copy-paste copies (keys from the episode's
  seed), so an episode's prediction is the same alone, in a batch, reordered, on two devices."""
  from mmtjax import parallel, steps
  config = _config(tfds_dir, 'prototype', vit_blocks=(1, 2, 3, 4),
                   feature_stages=('layer3', 'layer4'), choose_stages=1)
  method = methods.for_config(config)
  model = method.build(config)
  variables = untrained_variables(model, config)
  rng = np.random.default_rng(2)
  b, s = 2, 42
  labels = np.zeros((b, 1, s, s), np.int32)
  labels[:, :, 8:30, 5:25] = 1
  batch = {'support_images': rng.normal(size=(b, 1, s, s, 3)).astype(np.float32), 'support_labels': labels,
           'query_images': rng.normal(size=(b, s, s, 3)).astype(np.float32),
           'query_labels': labels[:, 0], 'episode_seed': np.array([5, 6], np.int32)}
  scores = jax.jit(lambda x: method.apply(model, variables, x, train=False)['stage_scores'])
  assert scores(batch).shape == (b, 2)
  step = jax.jit(lambda v, x: steps.eval_step(v, x, method=method, model=model, mode={}, output='logits')[0])
  together = np.asarray(step(variables, batch))
  order = np.array([1, 0])
  # The same copies and the same choice wherever the episode sits (the ViT's sums may round
  # differently in another batch shape: 1e-5 of logits about 10).
  np.testing.assert_allclose(np.asarray(step(variables, {k: v[order] for k, v in batch.items()})), together[order],
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(step(variables, {k: v[1:2] for k, v in batch.items()}))[0], together[1],
                             atol=1e-5)
  devices = jax.local_devices()[:2]
  pmapped = parallel.make_eval_step(method, model, {}, devices, output='logits')
  sharded, _ = pmapped(parallel.replicate(variables, devices), {k: v.reshape(2, 1, *v.shape[1:]) for k, v in batch.items()})
  np.testing.assert_allclose(np.asarray(sharded).reshape(together.shape), together, atol=1e-5)
  # Another seed draws other copies: the scores (not necessarily the choice) change.
  other = scores({**batch, 'episode_seed': batch['episode_seed'] + 100})
  assert not np.allclose(np.asarray(other), np.asarray(scores(batch)))
