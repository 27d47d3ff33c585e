r"""Step time of `mmt` vs `baseline` (and the CPU-sized `mmnet`) on the same input (not a test).

  python benchmarks/step_time.py                      # default config sizes
  python benchmarks/step_time.py --image_size 96 --batch 16 --iters 50

Reports the median wall time of
  - the train step (mmt trains two branches: original and re-styled features;
    mmnet is configs/default.py:model=mmnet),
  - the eval step with the memory transfer on and off,
  - the style-memory update alone (statistics, EMA step, re-styling),
on whatever device JAX picks, and prints the device and the command.
"""

import argparse
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from mmtjax import methods, parallel  # noqa: E402
from mmtjax.models import get_model  # noqa: E402
from mmtjax.models.style_memory import StyleMemory  # noqa: E402
from mmtjax.state import create_train_state, learning_rate_schedule, trainable_labels  # noqa: E402


def _time(fn, iters):
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--image_size', type=int, default=64)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--shot', type=int, default=1)
  p.add_argument('--iters', type=int, default=30)
  a = p.parse_args()
  n_dev = jax.local_device_count()
  rng = np.random.default_rng(0)
  s, k, b = a.image_size, a.shot, a.batch
  labels = np.zeros((b, k, s, s), np.uint8)
  labels[..., s // 4:s // 2, s // 4:s // 2] = 1
  host = {'support_images': rng.normal(size=(b, k, s, s, 3)).astype(np.float32),
          'support_labels': labels,
          'query_images': rng.normal(size=(b, s, s, 3)).astype(np.float32),
          'query_labels': labels[:, 0].copy()}
  host = {key: v.reshape(n_dev, b // n_dev, *v.shape[1:]) for key, v in host.items()}
  batch = parallel.shard(host)
  print(f'device: {jax.devices()[0].device_kind} x{n_dev} | command: {" ".join(sys.argv)}')
  rows = {}
  for name in ('baseline', 'mmt', 'mmnet'):
    config = default.get_config(f'model={name},shot={k}')
    config.data.image_size = s
    model = get_model(config, axis_name=parallel.AXIS)
    state, tx = create_train_state(model, config)
    step = parallel.make_train_step(model, tx, config, learning_rate_schedule(config),
                                    trainable_labels(state.params, config))
    holder = [parallel.replicate(state)]

    def train():
      holder[0], stats = step(holder[0], batch)
      return stats

    rows[f'{name} train step'] = _time(train, a.iters)
    variables = parallel.eval_variables(holder[0])
    method = methods.get(name)
    for mode_name, mode in method.eval_modes.items():
      ev = parallel.make_eval_step(method, model, mode)
      label = f'{name} eval step' + (f' ({mode_name})' if len(method.eval_modes) > 1 else '')
      rows[label] = _time(lambda ev=ev: ev(variables, batch), a.iters)
    if name == 'mmt':
      images = np.concatenate([host['support_images'][0].reshape(-1, s, s, 3), host['query_images'][0]])
      feats = model.apply(parallel.unreplicate(variables), images, train_bn=False,
                          stop=config.model.memory_stage,
                          method=lambda m, x, **kw: m.encoder(x, **kw))[config.model.memory_stage]
      mem = StyleMemory(**config.memory)
      mvars = mem.init(jax.random.key(0), feats, domain='source', train=False)
      update = jax.jit(lambda v, f: mem.apply(v, f, domain='source', train=True, mutable=['memory']))
      mvars = update(mvars, feats)[1]  # Past the first (seeding) update: time the steady state.
      rows['style memory update alone'] = _time(lambda: update(mvars, feats), a.iters)
  width = max(map(len, rows))
  for label, t in rows.items():
    print(f'{label:<{width}}  {t * 1e3:8.2f} ms')
  base, mmt = rows['baseline train step'], rows['mmt train step']
  on, off = rows['mmt eval step (memory_on)'], rows['mmt eval step (memory_off)']
  print(f'mmt/baseline train step: {mmt / base:.2f}x | transfer on/off eval step: '
        f'{100 * (on / off - 1):+.1f}% | memory update / mmt train step: '
        f'{100 * rows["style memory update alone"] / mmt:.1f}%')


if __name__ == '__main__':
  main()
