"""Model init/apply: collections, shapes, no retracing, robustness to empty masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from mmtjax.data.episode_checks import check_inputs
from mmtjax.models import backbones, get_model


def _config(model='mmt', shot=1):
  config = default.get_config(f'model={model},shot={shot}')
  config.data.image_size = 32
  config.model.embed_dim = 8
  if 'memory' in config:  # baseline has no memory
    config.memory.num_items = 4
  return config


def _batch(b=2, k=1, s=32, seed=0):
  rng = np.random.default_rng(seed)
  labels = np.zeros((b, k, s, s), np.uint8)
  labels[..., 8:20, 8:20] = 1
  q = np.zeros((b, s, s), np.uint8)
  q[:, 10:24, 4:16] = 1
  return (rng.normal(size=(b, k, s, s, 3)).astype(np.float32), labels,
          rng.normal(size=(b, s, s, 3)).astype(np.float32), q)


def _init(model, k=1):
  si, sl, qi, _ = _batch(k=k)
  return model.init(jax.random.key(0), si, sl, qi, train=False)


def test_mmt_variables_are_params_batch_stats_memory():
  variables = _init(get_model(_config()))
  assert set(variables) == {'params', 'batch_stats', 'memory'}
  assert set(variables['memory']['style_memory']) == {'means', 'stds', 'center_mean', 'center_std',
                                                      'usage', 'initialized'}
  assert set(_init(get_model(_config('baseline')))) == {'params', 'batch_stats'}


@pytest.mark.parametrize('shot', [1, 3])
def test_training_outputs_and_shapes(shot):
  model = get_model(_config(shot=shot))
  variables = _init(model, shot)
  si, sl, qi, _ = _batch(k=shot)
  out, new = model.apply(variables, si, sl, qi, train=True, rngs={'dropout': jax.random.key(1)},
                         mutable=['batch_stats', 'memory'])
  assert out['logits'].shape == (2, 4, 4, 2) and out['logits_orig'].shape == (2, 4, 4, 2)
  assert out['proto_orig'].shape == (2, 8)
  assert not np.allclose(new['memory']['style_memory']['means'], variables['memory']['style_memory']['means'])


def test_eval_never_changes_memory():
  model = get_model(_config())
  variables = _init(model)
  si, sl, qi, _ = _batch()
  for transfer in (True, False):
    _, new = model.apply(variables, si, sl, qi, train=False, transfer=transfer, mutable=['memory'])
    np.testing.assert_array_equal(new['memory']['style_memory']['means'],
                                  variables['memory']['style_memory']['means'])


def test_empty_support_mask_gives_finite_logits():
  model = get_model(_config())
  variables = _init(model)
  si, sl, qi, _ = _batch()
  sl[0] = 0
  out, _ = model.apply(variables, si, sl, qi, train=True, rngs={'dropout': jax.random.key(1)},
                       mutable=['batch_stats', 'memory'])
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(out))


def test_jitted_step_does_not_retrace_across_episodes():
  model = get_model(_config())
  variables = _init(model)
  traces = []

  @jax.jit
  def step(variables, si, sl, qi):
    traces.append(1)
    return model.apply(variables, si, sl, qi, train=False)['logits']

  for seed in range(3):
    si, sl, qi, _ = _batch(seed=seed)
    step(variables, si, sl, qi)
  assert len(traces) == 1


@pytest.mark.parametrize('name,stem', [('resnet50', 'torchvision'), ('resnet50', 'deep'),
                                       ('resnet101', 'deep'), ('vgg16_bn', None)])
@pytest.mark.parametrize('output_stride', [8, 32])
def test_backbone_stage_shapes(name, stem, output_stride):
  net = backbones.get_backbone(name, stem=stem, output_stride=output_stride)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(lambda: net.init(jax.random.key(0), x, train_bn=False))
  out = jax.eval_shape(lambda v: net.apply(v, x, train_bn=False), variables)
  deep = 64 // output_stride
  assert out['layer2'].shape[1] == 8 and out['layer4'].shape[1] == deep
  channels = {'resnet50': 2048, 'resnet101': 2048, 'vgg16_bn': 512}[name]
  assert out['layer4'].shape[-1] == channels


def test_check_inputs_reports_bad_episodes():
  si, sl, qi, ql = _batch()
  check_inputs(si, sl, qi, ql)
  with pytest.raises(ValueError, match='does not match'):
    check_inputs(si, sl, qi[:, :16], ql)
  bad = sl.copy()
  bad[0, 0, 0, 0] = 7
  with pytest.raises(ValueError, match='outside'):
    check_inputs(si, bad, qi, ql)
  empty = sl.copy()
  empty[1] = 0
  with pytest.raises(ValueError, match='no foreground'):
    check_inputs(si, empty, qi, ql)
  nan = si.copy()
  nan[0, 0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    check_inputs(nan, sl, qi, ql)
