r"""Does test-time adaptation help, and which settings? (not a test)

  python benchmarks/adaptation.py train   --out workdirs/adaptation            # 3 methods x seeds
  python benchmarks/adaptation.py select  --out workdirs/adaptation            # source validation grid
  python benchmarks/adaptation.py measure --out workdirs/adaptation            # target, on vs off
  python benchmarks/adaptation.py speed   --out workdirs/adaptation            # batched vs looped

train: configs/default.py on the embedded data for each method (mmt, baseline,
mmnet) and seed (a finished run is reused). select: for seed 0 of each
method, a grid of config.eval.adapt settings scored on the *source*
validation split (the held-out source images train.py validates on, its 100
validation episodes, seed eval.seed + 1), 1- and 5-shot: the defaults in
configs/default.py are read off this table, never off a target. measure:
the config's target episodes (300, eval seed 0), every seed, 1- and 5-shot,
each eval mode with and without adaptation; mean +- std over the seeds.
speed: episodes/s of the compiled batched adaptation against a Python loop
over the same episodes, one episode per call (the anchors' way), same
device, same steps, and the largest score difference between the two.
Every number is printed with the device and command and written to
<out>/<stage>.json.
"""

import argparse
import itertools
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from mmtjax import evaluation, methods, parallel, sweeps, train_lib  # noqa: E402
from mmtjax.data import datasets  # noqa: E402

MODELS = ('mmt', 'baseline', 'mmnet')


def _config(model: str, seed: int, shot: int = 1, **adapt):
  config = default.get_config(f'model={model},shot={shot}')
  config.seed = seed
  config.train.eval_every = 0
  config.eval.adapt.update(adapt)
  return config


def _workdir(out: str, model: str, seed: int) -> str:
  return os.path.join(out, model, f'seed{seed}')


def _restored(out, model, seed):
  config = _config(model, seed)
  step, net, host = sweeps._restore(_workdir(out, model, seed), config, best=False, step=None)
  return net, parallel.replicate(host)


def train(a):
  for seed, model in itertools.product(a.seeds, a.models):
    train_lib.train(_config(model, seed), _workdir(a.out, model, seed))
  return {}


def _val_miou(net, variables, config, rows):
  split = datasets.load_split(config.data, config.data.val_split, training=False)
  report = evaluation.evaluate_variables(net, variables, config, split, split_name=config.data.val_split,
                                       protocol=train_lib._val_protocol(config), modes=rows)
  return {k: v['miou'] for k, v in report['results'].items()}, report['seconds']


def select(a):
  """Grid on the source validation split (seed 0 of each method, its first eval mode)."""
  from mmtjax import adapt
  out = {}
  for model in a.models:
    method = methods.get(model)
    net, variables = _restored(a.out, model, a.seeds[0])
    name, mode = next(iter(method.eval_modes.items()))
    groups = [(g,) for g in (a.groups or method.adapt_groups)]
    if len(method.adapt_groups) > 1 and not a.groups:
      groups.append(tuple(method.adapt_groups))
    for shot in a.shots:
      config = _config(model, a.seeds[0], shot)
      rows = {name: dict(mode)}
      for steps, lr, group in itertools.product(a.steps_grid, a.lr_grid, groups):
        rows[f'steps={steps} lr={lr:g} groups={"+".join(group)}{a.extra_label}'] = (dict(mode), adapt.from_config(
            _config(model, a.seeds[0], shot, steps=steps, lr=lr, groups=group, **a.extra), method))
      miou, seconds = _val_miou(net, variables, config, rows)
      out[f'{model} {shot}-shot'] = miou
      print(f'{model} {shot}-shot ({seconds:.0f} s): ' + ', '.join(f'{k} {v:.2f}' for k, v in miou.items()),
            flush=True)
  return out


def measure(a):
  results = {}  # model -> row -> shot -> [mIoU per seed]
  for model, seed in itertools.product(a.models, a.seeds):
    workdir = _workdir(a.out, model, seed)
    for shot in a.shots:
      config = _config(model, seed, shot, **({'steps': a.adapt_steps} if a.adapt_steps is not None else {}),
                       **a.extra)
      if not config.eval.adapt.steps:
        raise SystemExit('error: the config has eval.adapt.steps=0; pass --adapt_steps N')
      label = ''.join(f'_{k}={v}' for k, v in a.extra.items())
      report = sweeps.evaluate(config, workdir, output=os.path.join(workdir, f'adapt_target_{shot}shot{label}.json'))
      for row, r in report['results'].items():
        results.setdefault(model, {}).setdefault(row, {}).setdefault(str(shot), []).append(r['miou'])
      print(f'{model} seed {seed} {shot}-shot: ' + ', '.join(
          f'{row} {r["miou"]:.2f}' for row, r in report['results'].items()) + f' ({report["seconds"]:.0f} s)',
          flush=True)
  lines = ['| model | row | ' + ' | '.join(f'{s}-shot mIoU' for s in a.shots) + ' |',
           '| --- | --- | ' + ' | '.join('---' for _ in a.shots) + ' |']
  for model, rows in results.items():
    for row, per_shot in rows.items():
      cells = [f'{np.mean(per_shot[str(s)]):.2f} ± {np.std(per_shot[str(s)]):.2f}' for s in a.shots]
      lines.append(f'| {model} | {row} | ' + ' | '.join(cells) + ' |')
  print('\n'.join(lines))
  return results


def speed(a):
  """Batched (one compiled step for a batch of episodes) against a Python loop of one-episode calls."""
  from mmtjax import adapt
  from mmtjax import steps as steps_lib
  from mmtjax.data import episodes as episode_lists
  out = {}
  for model in a.models:
    config = _config(model, a.seeds[0], a.shots[-1], steps=a.adapt_steps or 10)
    method = methods.get(model)
    net, variables = _restored(a.out, model, a.seeds[0])
    host = parallel.unreplicate(variables)
    adaptation = adapt.from_config(config, method)
    split = datasets.load_split(config.data, config.data.test_split, training=False)
    protocol = datasets.test_protocol(datasets.test_data(config.data), config.eval)
    eps = episode_lists.protocol_episodes(split, datasets.test_data(config.data), protocol, config.data.shot)
    eps = eps[:a.speed_episodes]
    loader = evaluation.episode_loader(split, protocol, config)
    batch = {k: v[0] for k, v in loader.batch(eps, [(-1, i) for i in range(len(eps))], (1, len(eps))).items()}
    mode = next(iter(method.eval_modes.values()))
    step = jax.jit(lambda v, b: steps_lib.eval_step(v, b, method=method, model=net, mode=mode,
                                                    adaptation=adaptation)[0])
    t0 = time.perf_counter()
    jax.block_until_ready(step(host, batch))
    compile_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = np.asarray(jax.block_until_ready(step(host, batch)))
    batched_s = time.perf_counter() - t0
    one = {k: v[:1] for k, v in batch.items()}
    t0 = time.perf_counter()
    jax.block_until_ready(step(host, one))
    compile_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped = np.concatenate([np.asarray(jax.block_until_ready(step(host, {k: v[i:i + 1] for k, v in batch.items()})))
                             for i in range(len(eps))])
    looped_s = time.perf_counter() - t0
    out[model] = {'episodes': len(eps), 'shot': config.data.shot, 'steps': adaptation.steps,
                  'batched_episodes_per_s': round(len(eps) / batched_s, 2),
                  'looped_episodes_per_s': round(len(eps) / looped_s, 2),
                  'compile_batched_s': round(compile_batched, 1), 'compile_one_s': round(compile_loop, 1),
                  'max_count_difference': int(np.max(np.abs(batched - looped)))}
    print(model, out[model], flush=True)
  return out


def _value(text: str):
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return {'true': True, 'false': False}.get(text.lower(), text)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('stage', choices=('train', 'select', 'measure', 'speed'))
  p.add_argument('--out', default='workdirs/adaptation')
  p.add_argument('--models', default=','.join(MODELS))
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--shots', default='1,5')
  p.add_argument('--steps_grid', default='10,30')
  p.add_argument('--lr_grid', default='1e-3,1e-2')
  p.add_argument('--groups', default=None, help="select: comma-separated groups, each alone (default: each "
                 'group of the method alone, and all together)')
  p.add_argument('--adapt_steps', type=int, default=None, help='measure/speed: eval.adapt.steps (default: config)')
  p.add_argument('--extra', default='', help='select, measure: other eval.adapt fields, e.g. loss=copy_paste,use_query=true')
  p.add_argument('--speed_episodes', type=int, default=16)
  a = p.parse_args()
  a.models = a.models.split(',')
  a.seeds = [int(s) for s in a.seeds.split(',')]
  a.shots = [int(s) for s in a.shots.split(',')]
  a.steps_grid = [int(s) for s in a.steps_grid.split(',')]
  a.lr_grid = [float(s) for s in a.lr_grid.split(',')]
  a.groups = a.groups.split(',') if a.groups else None
  a.extra = {k: _value(v) for k, v in (item.split('=', 1) for item in filter(None, a.extra.split(',')))}
  a.extra_label = ''.join(f' {k}={v}' for k, v in a.extra.items())
  print(f'device: {jax.devices()[0].device_kind} x{jax.local_device_count()} | command: {" ".join(sys.argv)}',
        flush=True)
  result = {'train': train, 'select': select, 'measure': measure, 'speed': speed}[a.stage](a)
  if result:
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f'{a.stage}{a.extra_label.replace(" ", "_")}.json'), 'w') as f:
      json.dump({'command': ' '.join(sys.argv), 'device': jax.devices()[0].device_kind, 'results': result}, f, indent=1)


if __name__ == '__main__':
  main()
