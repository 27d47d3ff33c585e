r"""Every speed number that matters on an accelerator, in one run (issue 39).

  # on the device machine, from the repository root (the first time a GPU is lent):
  python benchmarks/device_suite.py --out $OUT/device_suite           # at most --budget (7 min) + a row
  # on this CPU (tiny shapes, a few steps; the test suite runs it so that it cannot rot):
  python benchmarks/device_suite.py --cpu --out /tmp/device_suite

Each row is `python -m mmtjax.bench` (mmtjax/bench.py: compile time, median step time over >= 20
steps after warm-up, XLA's FLOPs, MFU against the device's peak, peak memory, evaluation
episodes/s) on the embedded dataset, whose images are resized to each row's size (speed does not
depend on the pixels), in its own process so that one row's memory never counts in another's.
Rows, most important first: MM-Net as in its paper (ResNet-50 deep stem, 473 px, 4 episodes,
1- and 5-shot), MMT and the baseline on ResNet-50 at 400 px, MMT and MM-Net on frozen DINOv2
ViT-B/14 and ViT-L/14 at 518 px (plain against fused attention, and evaluation without the
feature cache, on ViT-B), 5-shot test-time adaptation (5 steps) batched against one episode at
a time, all bfloat16, then MM-Net in float32. The official PyTorch MM-Net comparison is not a
row: its code is not in this repository (BENCHMARKS.md, "Against the official PyTorch MM-Net"). Each row's JSON goes into --out,
and a Markdown table (device, driver, versions, command) prints last and is written there as
table.md. A row that fails is a table line saying why; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (configs/default.py argument, config overrides, bench flags)
_R50 = {'model.backbone': 'resnet50', 'model.stem': 'deep', 'model.freeze_backbone': True}
_MMNET_PAPER = {**_R50, 'model.reduce_dim': 256, 'model.prior_stage': 'layer4', 'model.backbone_bn': 'batch',
                'data.image_size': 473, 'train.batch_size': 4, 'data.augment': 'mmnet'}
_VIT = {'data.image_size': 518, 'train.batch_size': 8, 'model.vit_blocks': None}
_MMT_VIT = {**_VIT, 'model.memory_stage': 'layer3', 'model.feature_stages': ('layer3', 'layer4')}
_MMNET_VIT = {**_VIT, 'model.reduce_dim': 256, 'model.prior_stage': 'layer4'}


def device_rows() -> list[tuple[str, str, dict, dict]]:
  """The rows, most important first (a row that would start past --budget is skipped)."""
  rows = []
  for shot in (1, 5):
    rows.append((f'MM-Net paper, R50, 473 px, {shot}-shot, bfloat16', f'model=mmnet,shot={shot}',
                 {**_MMNET_PAPER, 'compute_dtype': 'bfloat16'}, {'eval_episodes': 500}))
  for model in ('mmt', 'baseline'):
    rows.append((f'{model}, R50, 400 px, 1-shot, bfloat16', f'model={model}',
                 {**_R50, 'data.image_size': 400, 'train.batch_size': 8, 'model.memory_stage': 'layer1',
                  'model.feature_stages': ('layer2', 'layer3'), 'model.embed_dim': 256,
                  'compute_dtype': 'bfloat16'}, {'eval_episodes': 500}))
  for vit in ('dinov2_vitb14', 'dinov2_vitl14'):
    for model, fields in (('mmt', _MMT_VIT), ('mmnet', _MMNET_VIT)):
      rows.append((f'{model}, {vit} frozen, 518 px, fused, bfloat16', f'model={model}',
                   {**fields, 'model.backbone': vit, 'compute_dtype': 'bfloat16'}, {'eval_episodes': 300}))
  rows.append(('mmt, dinov2_vitb14, 518 px, plain attention', 'model=mmt',
               {**_MMT_VIT, 'model.backbone': 'dinov2_vitb14', 'model.attention': 'plain',
                'compute_dtype': 'bfloat16'}, {'eval_episodes': 300}))
  rows.append(('mmt, dinov2_vitb14, 518 px, evaluation uncached', 'model=mmt',
               {**_MMT_VIT, 'model.backbone': 'dinov2_vitb14', 'compute_dtype': 'bfloat16',
                'model.cache_features_mb': 0}, {'eval_episodes': 300}))
  for batch in (8, 1):
    rows.append((f'adaptation 5-shot x 5 steps, mmt R50 400 px, {batch} episode(s) a batch', 'model=mmt,shot=5',
                 {**_R50, 'data.image_size': 400, 'train.batch_size': 8, 'eval.batch_size': batch,
                  'eval.adapt.steps': 5, 'compute_dtype': 'bfloat16'}, {'eval_episodes': 100}))
  rows.append(('MM-Net paper, R50, 473 px, 1-shot, float32', 'model=mmnet,shot=1',
               {**_MMNET_PAPER, 'compute_dtype': 'float32'}, {'eval_episodes': 500}))
  return rows


def cpu_rows() -> list[tuple[str, str, dict, dict]]:
  """The same kinds of rows at CPU sizes: the suite runs them in seconds."""
  tiny = {'data.image_size': 32, 'train.batch_size': 4, 'eval.batch_size': 4}  # 1 or 4 devices
  return [
      ('mmnet, resnet_tiny, 32 px, 1-shot', 'model=mmnet', tiny, {'eval_episodes': 4}),
      ('mmt, dinov2_tiny frozen, 32 px, plain', 'model=mmt',
       {**tiny, 'model.backbone': 'dinov2_tiny', 'model.attention': 'plain'}, {'eval_episodes': 8}),
      ('adaptation 2-shot x 2 steps, mmt', 'model=mmt,shot=2', {**tiny, 'eval.adapt.steps': 2},
       {'eval_episodes': 4}),
  ]


def _flag(key: str, value) -> str:
  if isinstance(value, tuple):
    value = ','.join(value)
  return f'--config.{key}={"None" if value is None else value}'


def _command(arg: str, fields: dict, bench: dict, json_path: str, steps: int, warmup: int) -> list[str]:
  return [sys.executable, '-m', 'mmtjax.bench', f'--config=configs/default.py:{arg}',
          *(_flag(k, v) for k, v in fields.items()),
          f'--steps={steps}', f'--warmup={warmup}', f'--eval_episodes={bench["eval_episodes"]}',
          '--pipeline_steps=2', f'--json={json_path}']


def configured(arg: str, fields: dict):
  """configs/default.py:`arg` with a row's 'section.field' overrides, as its --config.* flags give."""
  sys.path.insert(0, ROOT)
  from configs import default
  config = default.get_config(arg)
  with config.unlocked():
    for key, value in fields.items():
      node = config
      *parents, leaf = key.split('.')
      for part in parents:
        node = node[part]
      node[leaf] = value
  return config


def _in_process(name: str, arg: str, fields: dict, bench: dict, path: str, steps: int, warmup: int) -> dict:
  """One row through mmtjax.bench.run in this process (the same numbers, no subprocess)."""
  from mmtjax import bench as bench_lib
  from mmtjax.errors import UserError
  config = configured(arg, fields)
  try:
    result = bench_lib.run(config, steps=steps, warmup=warmup, eval_episodes=bench['eval_episodes'],
                           pipeline_steps=2)
  except UserError as e:
    return {'row': name, 'error': str(e)}
  with open(path, 'w') as f:
    json.dump(result, f, indent=2)
  return {'row': name, 'error': None, **result}


def _versions() -> str:
  import jax
  parts = [f'jax {jax.__version__}']
  try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=30)
    if smi.returncode == 0 and smi.stdout.strip():
      parts.append('GPU ' + smi.stdout.strip().splitlines()[0])
  except (OSError, subprocess.TimeoutExpired):
    pass
  try:
    import torch  # noqa: F401 - only reported: the official code's comparison needs it
    parts.append(f'torch {torch.__version__}')
  except ImportError:
    pass
  return ', '.join(parts)


def _cell(r: dict | None, path: str, fmt: str) -> str:
  node = r
  for part in path.split('.'):
    node = None if node is None else node.get(part)
  return '-' if node is None else format(node, fmt)


def table(results: list[dict], header: str) -> str:
  lines = [header, '',
           '| row | compile s | step ms (median) | episodes/s train | TFLOP/s | MFU | peak memory GiB | '
           'eval episodes/s |', '|---' * 8 + '|']
  for r in results:
    if r.get('error'):
      lines.append(f"| {r['row']} | failed: {r['error']} |" + ' |' * 6)
      continue
    mem = r['train'].get('peak_memory_bytes')
    lines.append(
        f"| {r['row']} | {_cell(r, 'train.compile_s', '.1f')} | {_cell(r, 'train.step_ms_median', '.1f')} | "
        f"{_cell(r, 'train.episodes_per_s', '.1f')} | {_cell(r, 'train.achieved_tflops', '.2f')} | "
        f"{_cell(r, 'train.mfu', '.1%')} | {'-' if mem is None else format(mem / 2**30, '.2f')} | "
        f"{_cell(r, 'eval.episodes_per_s', '.1f')} |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True, help='folder for each row JSON and table.md (created; never replaced)')
  p.add_argument('--cpu', action='store_true', help='tiny shapes and few steps (this CPU, the test suite)')
  p.add_argument('--rows', default=None, help='only the rows whose name holds one of these comma-separated words')
  p.add_argument('--timeout', type=int, default=150, help='seconds a row may take before it is stopped')
  p.add_argument('--in_process', action='store_true', help='run the rows in this process (the test suite: '
                 'no second JAX start-up; peak memory then counts every row so far)')
  p.add_argument('--budget', type=int, default=420, help='seconds: no row starts after this (the device '
                 'time of a session is short); skipped rows are listed')
  args = p.parse_args(argv)
  out = os.path.abspath(os.path.expanduser(args.out))
  if os.path.exists(out):
    print(f'error: --out {out} exists; choose a new folder (results are never replaced)', file=sys.stderr)
    return 2
  rows = cpu_rows() if args.cpu else device_rows()
  if args.rows:
    words = [w.strip() for w in args.rows.split(',') if w.strip()]
    rows = [r for r in rows if any(w in r[0] for w in words)]
  steps, warmup = (3, 1) if args.cpu else (20, 3)
  os.makedirs(out)
  t0 = time.time()
  results = []
  env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
  for i, (name, arg, fields, bench) in enumerate(rows):
    if time.time() - t0 > args.budget:
      results.append({'row': name, 'error': f'skipped: past the {args.budget} s budget'})
      continue
    path = os.path.join(out, f'row{i:02d}.json')
    cmd = _command(arg, fields, bench, path, steps, warmup)
    t = time.time()
    if args.in_process:
      results.append(_in_process(name, arg, fields, bench, path, steps, warmup))
      print(f'{name}: {"ok" if results[-1]["error"] is None else results[-1]["error"]} ({time.time() - t:.0f} s)')
      continue
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
      error = None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ['exit status '
                                                                                       f'{proc.returncode}'])[-1]
    except subprocess.TimeoutExpired:
      error = f'over {args.timeout} s'
    result = {'row': name, 'error': error}
    if error is None:
      with open(path) as f:
        result.update(json.load(f))
    results.append(result)
    print(f'{name}: {"ok" if error is None else error} ({time.time() - t:.0f} s)', flush=True)
  import jax
  device = jax.devices()[0]
  header = (f'Device: {device.device_kind} ({device.platform}) x{jax.local_device_count()}, {_versions()}, '
            f'{platform.machine()}; {time.time() - t0:.0f} s for {len(rows)} rows; '
            f'`python benchmarks/device_suite.py {" ".join(argv if argv is not None else sys.argv[1:])}`')
  text = table(results, header)
  with open(os.path.join(out, 'table.md'), 'w') as f:
    f.write(text + '\n')
  print(text)
  return 0 if all(r['error'] is None for r in results) else 1


if __name__ == '__main__':
  sys.exit(main())
