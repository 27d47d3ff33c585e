"""PyTorch checkpoints read without PyTorch, and their conversion to the Flax backbone.

The test files are written here in torch's documented on-disk layouts (zip:
<prefix>/data.pkl + <prefix>/data/<key>; legacy: magic, protocol, sys info,
object pickle, storage keys, raw storages), through a stand-in `torch` module
that only exists while a file is written.
"""

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmtjax.models import backbones
from mmtjax.weights import convert, torch_pth

_TYPES = {np.dtype(np.float32): 'FloatStorage', np.dtype(np.float16): 'HalfStorage',
          np.dtype(np.int64): 'LongStorage'}


@contextlib.contextmanager
def _fake_torch():
  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')
  for name in _TYPES.values():
    setattr(torch, name, type(name, (), {'__module__': 'torch', '__qualname__': name}))

  def _rebuild_tensor_v2(*args):
    raise AssertionError('never called while writing')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  torch._utils = utils
  sys.modules.update({'torch': torch, 'torch._utils': utils})
  try:
    yield torch, utils
  finally:
    del sys.modules['torch'], sys.modules['torch._utils']


class _Storage:
  def __init__(self, key, array):
    self.key, self.flat = key, np.ascontiguousarray(array).ravel()


class _TensorRef:
  def __init__(self, utils, storage, shape, stride):
    self.args = (utils._rebuild_tensor_v2, (storage, 0, shape, stride, False, collections.OrderedDict()))

  def __reduce__(self):
    return self.args


def _prepare(state, utils, transpose_last=None):
  """state dict -> (objects to pickle, storages); `transpose_last` stores that key non-contiguously."""
  storages, objects = [], collections.OrderedDict()
  for i, (k, v) in enumerate(state.items()):
    if k == transpose_last:  # stored as the transpose, read back through strides
      base = np.ascontiguousarray(v.T)
      stride = (1, v.shape[0])
    else:
      base = v
      stride = tuple(int(np.prod(v.shape[j + 1:])) for j in range(v.ndim))
    storages.append(_Storage(str(i), base))
    objects[k] = _TensorRef(utils, storages[-1], tuple(v.shape), stride)
  return objects, storages


class _Pickler(pickle.Pickler):
  def __init__(self, f, torch, legacy):
    super().__init__(f, protocol=2)
    self.torch, self.legacy = torch, legacy

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      storage_type = getattr(self.torch, _TYPES[obj.flat.dtype])
      pid = ('storage', storage_type, obj.key, 'cpu', obj.flat.size)
      return pid + (None,) if self.legacy else pid
    return None


def write_pth(path, state, legacy=False, transpose_last=None, wrap=False):
  with _fake_torch() as (torch, utils):
    objects, storages = _prepare(state, utils, transpose_last)
    obj = {'state_dict': objects} if wrap else objects
    if legacy:
      with open(path, 'wb') as f:
        pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({'little_endian': True}, f, protocol=2)
        _Pickler(f, torch, legacy=True).dump(obj)
        pickle.dump([s.key for s in storages], f, protocol=2)
        for s in storages:
          f.write(struct.pack('<q', s.flat.size) + s.flat.tobytes())
      return
    buf = io.BytesIO()
    _Pickler(buf, torch, legacy=False).dump(obj)
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', buf.getvalue())
      z.writestr('archive/version', '3\n')
      for s in storages:
        z.writestr(f'archive/data/{s.key}', s.flat.tobytes())


def _state():
  rng = np.random.default_rng(0)
  return collections.OrderedDict([
      ('module.conv.weight', rng.normal(size=(4, 3, 3, 3)).astype(np.float32)),
      ('module.fc.weight', rng.normal(size=(5, 7)).astype(np.float32)),
      ('module.half', rng.normal(size=(6,)).astype(np.float16)),
      ('module.bn.num_batches_tracked', np.array(12, np.int64)),
  ])


@pytest.mark.parametrize('legacy', [False, True])
def test_state_dicts_read_back_in_both_formats(tmp_path, legacy):
  path = str(tmp_path / 'w.pth')
  state = _state()
  write_pth(path, state, legacy=legacy, transpose_last='module.fc.weight', wrap=True)
  got = torch_pth.load_state_dict(path)
  assert list(got) == ['conv.weight', 'fc.weight', 'half', 'bn.num_batches_tracked']
  for k, v in state.items():
    np.testing.assert_array_equal(got[k[len('module.'):]], v)
    assert got[k[len('module.'):]].dtype == v.dtype


def test_only_state_dict_objects_are_unpickled(tmp_path):
  path = str(tmp_path / 'evil.pth')
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps(os.system, protocol=2))
  with pytest.raises(torch_pth.WeightsError, match='unsupported object in a state dict: posix.system'):
    torch_pth.load_state_dict(path)


def test_corrupt_and_truncated_files_give_one_line_errors(tmp_path):
  junk = tmp_path / 'junk.pth'
  junk.write_bytes(b'not a checkpoint at all')
  with pytest.raises(torch_pth.WeightsError, match='junk.pth is not a readable PyTorch state dict'):
    torch_pth.load_state_dict(str(junk))
  cut = str(tmp_path / 'cut.pth')
  write_pth(cut, _state(), legacy=True)
  with open(cut, 'r+b') as f:
    f.truncate(os.path.getsize(cut) - 10)
  with pytest.raises(torch_pth.WeightsError, match='truncated'):
    torch_pth.load_state_dict(cut)
  with pytest.raises(torch_pth.WeightsError, match='does not exist'):
    torch_pth.load_state_dict(str(tmp_path / 'missing.pth'))


def _template(name, stem=None, size=32):
  bb = backbones.get_backbone(name, stem=stem)
  return bb, jax.tree.map(np.asarray, bb.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                                              train_bn=False))


def _torch_state_for(template):
  """The torch-named state dict a checkpoint of this backbone would hold (random values)."""
  rng = np.random.default_rng(1)
  state = {}
  leaf = {('params', 'kernel'): 'weight', ('params', 'bias'): 'bias', ('params', 'scale'): 'weight',
          ('batch_stats', 'mean'): 'running_mean', ('batch_stats', 'var'): 'running_var'}
  for path, x in jax.tree_util.tree_flatten_with_path(template)[0]:
    keys = [p.key for p in path]
    prefix = convert._resnet_names(tuple(keys[1:-1]))
    shape = (x.shape[3], x.shape[2], x.shape[0], x.shape[1]) if keys[-1] == 'kernel' else x.shape
    state[f'{prefix}.{leaf[(keys[0], keys[-1])]}'] = rng.normal(size=shape).astype(np.float32)
  state['fc.weight'] = rng.normal(size=(10, 128)).astype(np.float32)
  state['bn1.num_batches_tracked'] = np.array(3, np.int64)
  return state


def test_resnet_weights_map_onto_the_backbone(tmp_path):
  bb, variables = _template('resnet_tiny')
  state = _torch_state_for(variables)
  assert 'conv3.weight' in state and 'layer2.0.downsample.0.weight' in state  # deep stem, PSPNet names
  path = str(tmp_path / 'tiny.pth')
  write_pth(path, state)
  model_vars = {'params': {'encoder': variables['params'], 'head': {'w': np.zeros(3)}},
                'batch_stats': {'encoder': variables['batch_stats']}}
  out = convert.load_backbone(path, model_vars, backbones.get_backbone('resnet_tiny'))
  np.testing.assert_array_equal(out['params']['encoder']['stages_2']['BasicBlock_0']['Conv_1']['kernel'],
                                np.transpose(state['layer2.0.conv2.weight'], (2, 3, 1, 0)))
  np.testing.assert_array_equal(out['batch_stats']['encoder']['stages_0']['BatchNorm_2']['var'],
                                state['bn3.running_var'])
  np.testing.assert_array_equal(out['params']['head']['w'], 0)  # untouched
  # The converted first conv computes torch's cross-correlation (numpy reference, no padding
  # effects at the centre pixel).
  x = np.random.default_rng(2).normal(size=(1, 9, 9, 3)).astype(np.float32)
  w = state['conv1.weight']  # [out, in, 3, 3], stride 2, padding 1
  y = jax.lax.conv_general_dilated(x, out['params']['encoder']['stages_0']['Conv_0']['kernel'], (2, 2),
                                   ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ref = np.einsum('oiyx,yxi->o', w, x[0, 1:4, 1:4, :])  # output pixel (1, 1) sees input rows 1..3
  np.testing.assert_allclose(y[0, 1, 1], ref, rtol=1e-5, atol=1e-5)


def test_missing_unused_and_misshaped_tensors_are_named(tmp_path):
  _, variables = _template('resnet_tiny')
  state = _torch_state_for(variables)
  model_vars = {'params': {'encoder': variables['params']}, 'batch_stats': {'encoder': variables['batch_stats']}}
  for edit, message in ((lambda s: s.pop('layer3.0.bn2.running_mean'), 'no layer3.0.bn2.running_mean'),
                        (lambda s: s.update(extra=np.zeros(3, np.float32)), 'match no backbone variable, e.g. extra'),
                        (lambda s: s.update({'conv1.weight': np.zeros((16, 3, 7, 7), np.float32)}),
                         r'conv1.weight has shape \(7, 7, 3, 16\)')):
    broken = dict(state)
    edit(broken)
    path = str(tmp_path / 'broken.pth')
    write_pth(path, broken)
    with pytest.raises(torch_pth.WeightsError, match=message):
      convert.load_backbone(path, model_vars, backbones.get_backbone('resnet_tiny'))


def test_vgg16_bn_layer_indices_follow_torchvision():
  bb = backbones.get_backbone('vgg16_bn')
  template = jax.eval_shape(lambda: bb.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train_bn=False))
  names = convert._vgg_names(template)
  convs = sorted(int(v.split('.')[1]) for k, v in names.items() if k[1].startswith('Conv'))
  assert convs == [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
  assert names[('stages_4', 'BatchNorm_2')] == 'features.41'


def test_training_starts_from_the_pretrained_backbone(tfds_dir, tmp_path):
  from mmtjax.state import with_pretrained
  from tests.conftest import state_like, tiny_config
  config = tiny_config(tfds_dir)
  state = state_like(config)
  torch_state = _torch_state_for({'params': state.params['encoder'],
                                  'batch_stats': state.model_state['batch_stats']['encoder']})
  config.model.pretrained = str(tmp_path / 'tiny.pth')
  write_pth(config.model.pretrained, torch_state)
  loaded = with_pretrained(jax.device_get(state), config)
  np.testing.assert_array_equal(loaded.params['encoder']['stages_1']['BasicBlock_0']['Conv_0']['kernel'],
                                np.transpose(torch_state['layer1.0.conv1.weight'], (2, 3, 1, 0)))
  assert set(loaded.params) == set(state.params)
  # A config differing only in the weights path still resumes the same run.
  from mmtjax import checkpointing
  assert checkpointing._model_signature({'model': {'pretrained': 'a', 'x': 1}}) == \
      checkpointing._model_signature({'model': {'pretrained': 'b', 'x': 1}})


def test_backbone_from_another_mmtjax_run(tfds_dir, tmp_path):
  from mmtjax import checkpointing
  from mmtjax.models import get_model
  from mmtjax.state import create_train_state, with_pretrained
  from tests.conftest import state_like, tiny_config
  source = tiny_config(tfds_dir)  # an MMT run's checkpoint, as train.py saves it ...
  ckpts = checkpointing.Checkpoints(str(tmp_path / 'mmt'))
  ckpts.save(1, state_like(source), source)
  ckpts.close()
  saved = checkpointing.Checkpoints(str(tmp_path / 'mmt'), create=False).restore_raw()
  config = tiny_config(tfds_dir, 'model=mmnet')  # ... gives its backbone to MM-Net
  config.model.pretrained = str(tmp_path / 'mmt')
  loaded = with_pretrained(state_like(config, seed=1), config)
  for got, want in zip(jax.tree.leaves(loaded.params['encoder']), jax.tree.leaves(saved['params']['encoder'])):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(loaded.model_state['batch_stats']['encoder']['stages_0']['BatchNorm_0']['mean'],
                                saved['model_state']['batch_stats']['encoder']['stages_0']['BatchNorm_0']['mean'])
  other = tiny_config(tfds_dir, 'model=mmnet')
  other.model.backbone = 'resnet50'
  other.model.pretrained = str(tmp_path / 'mmt')
  big = jax.eval_shape(lambda: create_train_state(get_model(other), other)[0])
  with pytest.raises(torch_pth.WeightsError, match='has shape .* the model needs'):
    convert.load_backbone(other.model.pretrained, {'params': big.params, 'batch_stats': big.model_state['batch_stats']},
                          backbones.get_backbone('resnet50'))


class _Payload:
  """Pickles to a call that would create `marker` if anything ran it."""

  def __init__(self, kind, marker):
    self.kind, self.marker = kind, marker

  def __reduce__(self):
    import subprocess
    if self.kind == 'os.system':
      return os.system, (f'touch {self.marker}',)
    if self.kind == 'eval':
      return eval, (f"open({self.marker!r}, 'w').close()",)
    return subprocess.call, (['touch', self.marker],)


def _legacy_with(path, position, payload):
  """A legacy-layout .pth whose pickle at `position` is the payload (the rest is well formed)."""
  parts = {'magic': 0x1950a86a20f9469cfc6c, 'protocol': 1001, 'sys_info': {'little_endian': True},
           'object': collections.OrderedDict(w=payload) if position == 'nested' else
           collections.OrderedDict(), 'keys': []}
  if position in parts:
    parts[position] = payload
  with open(path, 'wb') as f:
    for name in ('magic', 'protocol', 'sys_info', 'object', 'keys'):
      pickle.dump(parts[name], f, protocol=2)


@pytest.mark.parametrize('kind', ['os.system', 'eval', 'subprocess'])
@pytest.mark.parametrize('layout', ['bare', 'legacy:magic', 'legacy:protocol', 'legacy:sys_info',
                                    'legacy:object', 'legacy:nested', 'legacy:keys', 'zip:data.pkl',
                                    'zip:nested'])
def test_no_code_runs_from_a_weights_file(tmp_path, kind, layout):
  marker = str(tmp_path / 'ran')
  payload = _Payload(kind, marker)
  path = str(tmp_path / 'evil.pth')
  if layout == 'bare':
    with open(path, 'wb') as f:
      pickle.dump(payload, f, protocol=2)
  elif layout.startswith('legacy:'):
    _legacy_with(path, layout.split(':')[1], payload)
  else:
    obj = payload if layout == 'zip:data.pkl' else {'state_dict': collections.OrderedDict(w=payload)}
    with zipfile.ZipFile(path, 'w') as z:
      z.writestr('archive/data.pkl', pickle.dumps(obj, protocol=2))
  with pytest.raises(torch_pth.WeightsError) as err:
    torch_pth.load_state_dict(path)
  assert not os.path.exists(marker)
  assert '\n' not in str(err.value) and 'unsupported object' in str(err.value)


def test_the_cli_reports_a_malicious_weights_file_in_one_line(tmp_path, tfds_dir):
  import subprocess
  marker = tmp_path / 'ran'
  path = str(tmp_path / 'evil.pth')
  with open(path, 'wb') as f:
    pickle.dump(_Payload('os.system', str(marker)), f, protocol=2)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, os.path.join(repo, 'train.py'), '--config',
                        os.path.join(repo, 'configs/default.py'), '--workdir', str(tmp_path / 'w'),
                        f'--config.model.pretrained={path}', f'--config.data.data_dir={tfds_dir}',
                        '--config.data.builder_config=tiny', '--config.train.num_steps=1'],
                       capture_output=True, text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 2, out.stderr
  assert not marker.exists()
  lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: ') and 'evil.pth' in lines[0], out.stderr
