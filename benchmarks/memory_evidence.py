r"""Does MMT's style memory help, and do several items beat one? (not a test)

  python benchmarks/memory_evidence.py --out workdirs/memory_evidence
  python benchmarks/memory_evidence.py --seeds 0,1,2 --steps 2000 --out ...

Trains configs/default.py on the embedded data for every seed as
  - the baseline (`model=baseline`, no memory),
  - MMT with one memory item (`memory.num_items=1`),
  - MMT with the default number of items,
then evaluates each on the target domain 1-shot and 5-shot (the config's 300
fixed test episodes, eval seed 0, the same for every training seed) with the
memory transfer on and off. Prints mean +- std over the seeds as a Markdown
table and writes every number to <out>/memory_evidence.json. A finished
run is reused (training resumes at its last step), so rerunning only adds
what is missing.
"""

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from mmtjax import sweeps, train_lib  # noqa: E402


def _variants(num_items: int):
  return {
      'baseline': ('model=baseline', {}),
      'mmt, N=1': ('model=mmt', {'num_items': 1}),
      f'mmt, N={num_items}': ('model=mmt', {}),
  }


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--out', default='workdirs/memory_evidence')
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--shots', default='1,5')
  p.add_argument('--steps', type=int, default=None, help='train.num_steps (default: the config)')
  a = p.parse_args()
  seeds = [int(s) for s in a.seeds.split(',')]
  shots = [int(s) for s in a.shots.split(',')]
  num_items = default.get_config().memory.num_items
  print(f'device: {jax.devices()[0].device_kind} x{jax.local_device_count()} | command: {" ".join(sys.argv)}',
        flush=True)
  results = {}  # variant -> mode -> shot -> [mIoU per seed]
  t0 = time.time()
  for name, (arg, memory) in _variants(num_items).items():
    for seed in seeds:
      config = default.get_config(arg)
      config.seed = seed
      config.train.eval_every = 0
      if a.steps:
        config.train.num_steps = a.steps
      config.memory.update(memory)
      workdir = os.path.join(a.out, name.replace(', ', '_').replace('=', ''), f'seed{seed}')
      train_lib.train(config, workdir)
      for shot in shots:
        config.data.shot = shot
        report = sweeps.evaluate(config, workdir, output=os.path.join(workdir, f'target_{shot}shot.json'))
        for mode, r in report['results'].items():
          results.setdefault(name, {}).setdefault(mode, {}).setdefault(str(shot), []).append(r['miou'])
      print(f'{name} seed {seed}: ' + ', '.join(
          f'{mode} {shot}-shot {v[str(shot)][-1]:.2f}' for mode, v in results[name].items() for shot in shots),
          flush=True)
  lines = ['| model | memory transfer | ' + ' | '.join(f'{s}-shot mIoU' for s in shots) + ' |',
           '| --- | --- | ' + ' | '.join('---' for _ in shots) + ' |']
  for name, modes in results.items():
    for mode, per_shot in modes.items():
      transfer = {'memory_on': 'on', 'memory_off': 'off'}.get(mode, mode)
      if name == 'baseline':
        transfer = 'none'
      cells = [f'{np.mean(per_shot[str(s)]):.2f} ± {np.std(per_shot[str(s)]):.2f}' for s in shots]
      lines.append(f'| {name} | {transfer} | ' + ' | '.join(cells) + ' |')
  table = '\n'.join(lines)
  print(f'\ntarget domain, mean ± std (numpy, ddof=0) over seeds {seeds}, '
        f'{time.time() - t0:.0f} s in all\n{table}')
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, 'memory_evidence.json'), 'w') as f:
    json.dump({'seeds': seeds, 'shots': shots, 'miou': results, 'table': table,
               'device': jax.devices()[0].device_kind, 'command': ' '.join(sys.argv)}, f, indent=2)


if __name__ == '__main__':
  main()
