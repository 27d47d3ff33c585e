"""A method is one object: the registry, each method's own terms and modes, and a new method
registered here trains, resumes and evaluates through the ordinary library path."""

import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import pytest

from mmtjax import checkpointing, cli, losses, methods, sweeps, train_lib
from mmtjax.models import backbones, heads
from tests.conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- a method of the test's own: prototype matching on the tiny backbone (no library change) ---

class _ProtoNet(nn.Module):
  @nn.compact
  def __call__(self, support_images, support_labels, query_images, *, train, temperature=20.0):
    b, k = support_images.shape[:2]
    images = jnp.concatenate([support_images.reshape(b * k, *support_images.shape[2:]), query_images])
    feats = backbones.get_backbone('resnet_tiny')(images, train_bn=train, stop='layer2')['layer2']
    feats = nn.Conv(16, (1, 1))(feats)
    support = feats[:b * k].reshape(b, k, *feats.shape[1:])
    bg, fg = heads.shot_prototypes(support, support_labels)
    return {'logits': heads.prototype_logits(feats[b * k:], bg, fg, temperature)}


class _ProtoNetMethod(methods.Method):
  name = 'protonet_test'
  eval_modes = {'sharp': {'temperature': 20.0}, 'soft': {'temperature': 5.0}}

  def config(self, variant='paper'):
    return {'model': {'name': self.name}, 'loss': {}}

  def build(self, config, axis_name=None):
    return _ProtoNet()

  def loss(self, outputs, query_labels, weights, axis_name):
    ce = losses.pixel_cross_entropy(outputs['logits'], query_labels)
    return ce, {'ce': ce}


def test_a_new_method_trains_resumes_and_evaluates_without_library_changes(tfds_dir, tmp_path):
  methods.register(_ProtoNetMethod())
  config = tiny_config(tfds_dir)
  for section, fields in methods.get('protonet_test').config().items():
    config[section] = fields
  del config['memory']
  config.train.num_steps = 2
  workdir = str(tmp_path)
  train_lib.train(config, workdir, stop_after_steps=1)
  result = train_lib.train(config, workdir)  # Resumes from step 1.
  assert result.step == 2 and checkpointing.Checkpoints(workdir).all_steps() == [1, 2]
  report = sweeps.evaluate(config, workdir)
  assert set(report['results']) == {'sharp', 'soft'}
  import math
  assert all(math.isfinite(r['miou']) for r in report['results'].values())
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert '"loss_ce"' in f.read()


# --- the built-in methods, through the registry ------------------------------------------------

@pytest.mark.parametrize('name,terms,modes', [
    ('mmt', {'pro', 'orth', 'cont'}, {'memory_on', 'memory_off'}),
    ('baseline', {'pro'}, {'no_memory'}),
    ('mmnet', {'main', 'aux', 'recon'}, {'mmnet'}),
])
def test_each_method_owns_its_loss_terms_and_eval_modes(tfds_dir, name, terms, modes):
  import jax
  import numpy as np

  from mmtjax.state import create_train_state
  method = methods.get(name)
  assert set(method.eval_modes) == modes
  config = tiny_config(tfds_dir, f'model={name}')
  model = method.build(config)
  state, _ = create_train_state(model, config)
  rng = np.random.default_rng(0)
  labels = np.zeros((2, 1, 32, 32), np.uint8)
  labels[..., 8:24, 8:24] = 1
  batch = {'support_images': rng.normal(size=(2, 1, 32, 32, 3)).astype(np.float32), 'support_labels': labels,
           'query_images': rng.normal(size=(2, 32, 32, 3)).astype(np.float32), 'query_labels': labels[:, 0]}
  @jax.jit
  def forward(variables, batch):
    outputs, _ = method.apply(model, variables, batch, train=True, rngs={'dropout': jax.random.key(0)},
                              mutable=['batch_stats', 'memory'])
    return method.loss(outputs, batch['query_labels'], dict(config.loss), None)

  loss, got = forward({'params': state.params, **state.model_state}, batch)
  assert set(got) == terms and np.isfinite(float(loss))


def test_no_library_file_asks_for_a_method_by_name():
  pattern = r"== 'mmnet'\|== 'mmt'\|== 'baseline'\|'aux_logits' in\|'logits_orig' in"
  out = subprocess.run(['grep', '-rn', pattern, 'mmtjax', 'configs', '--include=*.py'], cwd=ROOT,
                       capture_output=True, text=True)
  hits = [line for line in out.stdout.splitlines() if not line.startswith('mmtjax/methods/')]
  assert hits == []


# --- user errors are a type; anything else is a bug -------------------------------------------

def test_a_plain_value_error_in_the_library_is_a_bug_with_a_traceback_file(tfds_dir, tmp_path, monkeypatch,
                                                                           capsys):
  def broken(*args, **kwargs):
    raise ValueError('operands could not be broadcast together with shapes (3,) (4,)')

  monkeypatch.setattr(train_lib, 'create_train_state', broken)
  config = tiny_config(tfds_dir)
  with pytest.raises(SystemExit) as done:
    cli.run(lambda: train_lib.train(config, str(tmp_path)), str(tmp_path))
  assert done.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.count('\n') == 0 and 'internal error (a bug in mmtjax' in err
  path = err.split('the traceback is in ')[1].split(';')[0]
  assert os.path.dirname(path) == str(tmp_path)
  with open(path) as f:
    text = f.read()
  assert 'Traceback' in text and 'broken' in text


def test_a_bad_config_field_is_still_one_line(tmp_path):
  out = subprocess.run([sys.executable, 'train.py', '--config', 'configs/default.py', '--workdir', str(tmp_path),
                        '--config.model.name=nope'], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == ["error: unknown model 'nope'; choose from ('mmt', 'baseline', 'mmnet', 'prototype')"]
