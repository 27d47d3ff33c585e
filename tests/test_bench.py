"""The benchmark command: FLOPs from XLA, donation, and a complete JSON on CPU."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmtjax import bench, parallel
from mmtjax.models import get_model
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels
from tests.conftest import tiny_config


def test_the_flop_count_of_one_convolution_equals_the_hand_computed_count():
  conv = nn.Conv(features=8, kernel_size=(3, 3), padding='VALID', use_bias=False)
  x = jnp.zeros((2, 10, 12, 5))
  params = conv.init(jax.random.key(0), x)
  compiled = jax.jit(conv.apply).lower(params, x).compile()
  # A multiply and an add per kernel tap: 2 x (2 x 8 x 10 outputs x 8 channels) x (3 x 3 x 5 taps).
  assert bench.compiled_flops(compiled) == 2 * (2 * 8 * 10 * 8) * (3 * 3 * 5)


def test_a_donated_train_step_leaves_no_second_copy_of_the_state(tfds_dir):
  config = tiny_config(tfds_dir)
  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                  trainable_labels(state.params, config))
  n = jax.local_device_count()
  s = config.data.image_size
  labels = np.zeros((n, 1, 1, s, s), np.uint8)
  labels[..., 4:12, 4:12] = 1
  batch = parallel.shard({'support_images': np.zeros((n, 1, 1, s, s, 3), np.float32), 'support_labels': labels,
                          'query_images': np.zeros((n, 1, s, s, 3), np.float32), 'query_labels': labels[:, :, 0]})
  rstate = parallel.replicate(jax.device_get(state))
  compiled = step.lower(rstate, batch).compile()
  # The compiled step aliases its state inputs to its outputs: the aliased bytes cover the state.
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(rstate)) // n
  assert compiled.memory_analysis().alias_size_in_bytes >= state_bytes
  before = jax.tree.leaves(rstate)
  new_state, _ = compiled(rstate, batch)
  jax.block_until_ready(new_state)
  # Every input buffer of the state was handed to the step's outputs (deleted here), none kept.
  assert all(x.is_deleted() for x in before)


def test_the_bench_command_writes_every_field_on_cpu(tfds_dir, tmp_path, capsys):
  config = tiny_config(tfds_dir)
  result = bench.run(config, steps=3, warmup=1, eval_episodes=8, pipeline_steps=2, peak=1.0)
  text = json.dumps(result)  # JSON-ready
  assert json.loads(text)['device_count'] == jax.local_device_count()
  t, i, e = result['train'], result['input'], result['eval']
  assert result['platform'] == 'cpu' and result['jax_version'] == jax.__version__ and result['config']['seed'] == 0
  assert t['step_ms_p10'] <= t['step_ms_median'] <= t['step_ms_p90'] and t['compile_s'] > 0
  assert t['flops_per_step'] > 0 and 0 < t['mfu'] and t['compiled_memory_bytes_per_device'] > 0
  assert 'peak_memory_bytes' in t  # None on CPU: the host allocator reports no peak
  assert i['pipeline_episodes_per_s'] > 0 and 0 <= i['wait_share_of_step_time'] <= 1
  assert e['episodes'] == 8 + config.eval.batch_size and e['episodes_per_s'] > 0 and 0 <= e['host_wait_share'] <= 1
  table = bench.format_table(result, 'cmd')
  for label in ('compile', 'train step', 'FLOPs/step', 'MFU', 'memory', 'input', 'eval'):
    assert f'\n{label} ' in f'\n{table}'
  assert bench.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.4
  assert bench.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  assert bench.peak_tflops('cpu', 'float32') is None
