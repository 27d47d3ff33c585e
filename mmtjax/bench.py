r"""Speed of a config on this machine's devices: one table and one JSON (not a test).

  python -m mmtjax.bench --config configs/default.py
  python -m mmtjax.bench --config configs/mmnet_pascal.py:fold=0,shot=1 --config.compute_dtype=bfloat16 \
      --config.train.batch_size=8 --eval_episodes 5000 --json bench.json
  python -m mmtjax.bench --config configs/default.py --peak_tflops 100   # a device the table lacks

Measures, for the config's model, data and batch (train.batch_size episodes
per step over the local devices):
  - compile time of the train step (lower + compile);
  - train step time: median and spread (10th-90th percentile) over --steps
    steps after --warmup, on one batch already on the devices (the step
    alone), and episodes/s;
  - model FLOPs per step from XLA's cost analysis of the compiled step (all
    devices) and MFU = FLOPs / step time / peak FLOP/s of the devices (the
    PEAK_TFLOPS table by device kind and compute dtype, or --peak_tflops);
  - peak device memory (the allocator's peak where the device reports one,
    and the compiled step's own footprint from XLA's memory analysis);
  - input pipeline episodes/s alone (decode, augment, batch; no device), and
    the share of step time the device waits for input when both run as in
    training (prefetch thread, host-to-device copy);
  - evaluation episodes/s on the config's test protocol, data loading
    included (--eval_episodes of them, after one compiling batch), and the
    share of that time the device waits on the host.
The data must be available (built, or --config.data.manual_dir); the
embedded dataset builds itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mmtjax import cli, config_lib, evaluation, parallel, report_files
from mmtjax.data import datasets, pipeline
from mmtjax.data.episodes import EpisodeSampler
from mmtjax.models import get_model
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels

# Dense peak TFLOP/s per device (vendor data sheets, without sparsity), by a substring of
# jax's device_kind. float32: the rate XLA's default precision reaches on float32 convolutions
# and matmuls: TF32 tensor cores on Ampere and later NVIDIA GPUs, bf16 passes on TPUs (None:
# not listed). Override with --peak_tflops.
PEAK_TFLOPS = {
    'H200': {'bfloat16': 989.4, 'float32': 494.7},
    'H100 PCIe': {'bfloat16': 756.0, 'float32': 378.0},
    'H100': {'bfloat16': 989.4, 'float32': 494.7},  # SXM
    'A100': {'bfloat16': 312.0, 'float32': 156.0},
    'L40S': {'bfloat16': 362.1, 'float32': 183.0},
    'L4': {'bfloat16': 121.0, 'float32': 60.0},
    'A10': {'bfloat16': 125.0, 'float32': 62.5},
    'V100': {'bfloat16': None, 'float32': 15.7},
    'TPU v6': {'bfloat16': 918.0, 'float32': None},  # Trillium (v6e)
    'TPU v5p': {'bfloat16': 459.0, 'float32': None},
    'TPU v5': {'bfloat16': 197.0, 'float32': None},  # v5e ('TPU v5 lite')
    'TPU v4': {'bfloat16': 275.0, 'float32': None},
}

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:args].', lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 30, 'Timed train steps (after the warm-up).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed train steps after compiling.')
_EVAL_EPISODES = flags.DEFINE_integer('eval_episodes', 256, 'Evaluation episodes timed (0: skip).')
_PIPELINE_STEPS = flags.DEFINE_integer('pipeline_steps', 20, 'Batches timed for the input pipeline alone.')
_PEAK = flags.DEFINE_float('peak_tflops', None, "Peak TFLOP/s per device for MFU (default: PEAK_TFLOPS by "
                           "device kind and compute dtype).")
_JSON = flags.DEFINE_string('json', None, 'Also write the JSON here (never replacing a file).')
flags.mark_flags_as_required(['config'])


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The PEAK_TFLOPS entry of the first key found in device_kind (longest keys first)."""
  for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if key.lower() in device_kind.lower():
      return PEAK_TFLOPS[key].get(dtype)
  return None


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled computation (per device for pmap), from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and cost.get('flops') is not None else None


def compiled_memory_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries of a compiled computation (per device), from XLA."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it.
    return None
  if m is None:
    return None
  aliased = getattr(m, 'alias_size_in_bytes', 0)
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - aliased)


def _peak_memory() -> int | None:
  stats = jax.local_devices()[0].memory_stats() if hasattr(jax.local_devices()[0], 'memory_stats') else None
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def _percentile(values, q):
  return float(np.percentile(np.asarray(values), q))


def run(config, *, steps: int = 30, warmup: int = 3, eval_episodes: int = 256, pipeline_steps: int = 20,
        peak: float | None = None) -> dict:
  """The benchmark's numbers (see the module docstring) as a JSON-ready dict."""
  datasets.resolve(config, training=True)
  config_lib.validate(config)
  devices = jax.local_devices()
  n_dev = len(devices)
  per_device = parallel.check_divisible(config.train.batch_size, n_dev)
  train_split = datasets.load_split(config.data, config.data.train_split, training=True)
  model = get_model(config, axis_name=parallel.AXIS)
  state, tx = create_train_state(model, config)
  step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                  trainable_labels(state.params, config))
  sampler = EpisodeSampler(train_split.index, train_split.classes, config.data.shot, config.seed)
  loader = pipeline.EpisodeLoader(train_split.source, image_size=config.data.image_size,
                                  augment=config.data.augment, seed=config.seed,
                                  num_workers=config.data.num_workers)

  def batches(num):
    return pipeline.train_batches(loader, sampler, start_step=0, num_steps=num, shape=(n_dev, per_device))

  # Input pipeline alone.
  it = batches(pipeline_steps + 1)
  next(it)  # thread pool warm-up
  t = time.perf_counter()
  n = sum(1 for _ in it)
  pipeline_eps = n * config.train.batch_size / (time.perf_counter() - t)

  # Compile, then the step alone on one batch already on the devices.
  _, host_batch = next(batches(1))
  batch = parallel.shard(host_batch)
  rstate = parallel.replicate(jax.device_get(state))
  t = time.perf_counter()
  compiled = step.lower(rstate, batch).compile()
  compile_s = time.perf_counter() - t
  flops_per_device = compiled_flops(compiled)
  step = compiled  # The same executable from here on (a pmap call would compile its own).
  for _ in range(warmup):
    rstate, stats = step(rstate, batch)
  jax.block_until_ready(rstate)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    rstate, stats = step(rstate, batch)
    jax.block_until_ready(stats)
    times.append(time.perf_counter() - t)
  median = statistics.median(times)

  # As in training: prefetch thread + host-to-device copy; time blocked waiting for input.
  waited, t0 = 0.0, time.perf_counter()
  ready = pipeline.prefetch(batches(steps), lambda sb: (sb[0], parallel.shard(sb[1])))
  while True:
    t = time.perf_counter()
    item = next(ready, None)
    waited += time.perf_counter() - t
    if item is None:
      break
    rstate, stats = step(rstate, item[1])
    jax.block_until_ready(stats)  # per step, to attribute the wait; training itself syncs only to log
  loop_s = time.perf_counter() - t0

  kind = devices[0].device_kind
  dtype = config.get('compute_dtype', 'float32')
  peak = peak if peak is not None else peak_tflops(kind, dtype)
  flops = flops_per_device * n_dev if flops_per_device is not None else None
  out = {
      'device_kind': kind, 'platform': devices[0].platform, 'device_count': n_dev,
      'process_count': jax.process_count(), 'jax_version': jax.__version__, 'compute_dtype': dtype,
      'model': config.model.name, 'shot': config.data.shot, 'image_size': config.data.image_size,
      'episodes_per_step': config.train.batch_size,
      'train': {
          'compile_s': round(compile_s, 3), 'step_ms_median': round(1e3 * median, 3),
          'step_ms_p10': round(1e3 * _percentile(times, 10), 3), 'step_ms_p90': round(1e3 * _percentile(times, 90), 3),
          'steps_timed': steps, 'episodes_per_s': round(config.train.batch_size / median, 2),
          'flops_per_step': flops, 'achieved_tflops': round(flops / median / 1e12, 4) if flops else None,
          'peak_tflops_per_device': peak,
          'mfu': round(flops / median / (peak * 1e12 * n_dev), 5) if flops and peak else None,
          'peak_memory_bytes': _peak_memory(),
          'compiled_memory_bytes_per_device': compiled_memory_bytes(compiled),
      },
      'input': {
          'pipeline_episodes_per_s': round(pipeline_eps, 2),
          'wait_share_of_step_time': round(waited / loop_s, 4),
          'workers': config.data.num_workers,
      },
      'eval': None,
  }
  if eval_episodes > 0:
    out['eval'] = _eval(model, rstate, config, eval_episodes)
  out['config'] = json.loads(config.to_json_best_effort())
  return out


def _eval(model, rstate, config, episodes: int) -> dict:
  """Evaluation episodes/s on the config's test protocol, --eval_episodes of them."""
  test_data = datasets.test_data(config.data)
  protocol = datasets.test_protocol(test_data, config.eval)
  first = max(1, config.eval.batch_size)
  # The anchors' lists have a fixed length: timing --eval_episodes of them draws the same protocol's
  # size, resize and scoring with mmtjax's sampler instead.
  protocol = dataclasses.replace(protocol, num_episodes=episodes + first,
                                 order='random' if protocol.order == 'anchors' else protocol.order)
  split = datasets.load_split(test_data, config.data.test_split, training=False)
  report = evaluation.evaluate_variables(model, parallel.eval_variables(rstate), config, split, protocol=protocol)
  return {'protocol': report['protocol'], 'episodes': report['num_episodes'], 'kshot': report['kshot'],
          'first_batch_s': report['first_batch_s'], 'episodes_per_s': report['episodes_per_s'],
          'host_wait_share': report['host_wait_share'], 'seconds': report['seconds'],
          'eval_modes': len(report['results']),
          'adapted_modes': sum(1 for k in report['results'] if k.endswith('+adapt')),
          'adapt_steps': report['adapt']['steps'] if report.get('adapt') else 0}


def _adapted(e: dict) -> str:
  if not e.get('adapted_modes'):
    return ''
  return f", {e['adapted_modes']} of them adapted per episode with {e['adapt_steps']} steps"


def format_table(r: dict, command: str) -> str:
  t, i, e = r['train'], r['input'], r['eval']

  def num(v, fmt):
    return 'n/a' if v is None else format(v, fmt)

  rows = [
      ('device', f"{r['device_kind']} x{r['device_count']} ({r['platform']}), jax {r['jax_version']}"),
      ('command', command),
      ('model', f"{r['model']}, {r['shot']}-shot, {r['image_size']} px, {r['episodes_per_step']} episodes/step, "
                f"{r['compute_dtype']}"),
      ('compile', f"{t['compile_s']:.2f} s"),
      ('train step', f"{t['step_ms_median']:.2f} ms median (p10 {t['step_ms_p10']:.2f}, p90 {t['step_ms_p90']:.2f}; "
                     f"{t['steps_timed']} steps) = {t['episodes_per_s']:.1f} episodes/s"),
      ('FLOPs/step', f"{num(t['flops_per_step'], '.4g')} (XLA cost analysis) = {num(t['achieved_tflops'], '.3f')} "
                     'TFLOP/s'),
      ('MFU', f"{num(t['mfu'], '.2%')} (peak {num(t['peak_tflops_per_device'], 'g')} TFLOP/s per device)"),
      ('memory', f"peak {num(t['peak_memory_bytes'], ',')} B in use; compiled step "
                 f"{num(t['compiled_memory_bytes_per_device'], ',')} B per device"),
      ('input', f"{i['pipeline_episodes_per_s']:.1f} episodes/s alone ({i['workers']} workers); device waits "
                f"{100 * i['wait_share_of_step_time']:.1f}% of step time"),
  ]
  if e:
    rows.append(('eval', f"{num(e['episodes_per_s'], '.1f')} episodes/s ({e['protocol']}, {e['episodes']} episodes, "
                         f"{e['eval_modes']} mode(s){_adapted(e)}, data loading included); host wait "
                         f"{num(e['host_wait_share'] and 100 * e['host_wait_share'], '.1f')}%"))
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'{k:<{width}}  {v}' for k, v in rows)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  command = 'python -m mmtjax.bench ' + ' '.join(sys.argv[1:])
  # No persistent compile cache here: the compile time is one of the numbers measured.
  if _STEPS.value < 1 or _WARMUP.value < 0 or _EVAL_EPISODES.value < 0 or _PIPELINE_STEPS.value < 1:
    cli.fail('--steps and --pipeline_steps must be >= 1, --warmup and --eval_episodes >= 0')
  result = cli.run(lambda: run(_CONFIG.value, steps=_STEPS.value, warmup=_WARMUP.value,
                               eval_episodes=_EVAL_EPISODES.value, pipeline_steps=_PIPELINE_STEPS.value,
                               peak=_PEAK.value))
  result['command'] = command
  print(format_table(result, command))
  text = json.dumps(result, indent=2)
  if _JSON.value:
    path = cli.run(lambda: report_files.write_text(os.path.expanduser(_JSON.value), text + '\n'))
    print(f'json: {path}')
  else:
    print('(--json PATH writes every field, the config included)')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
