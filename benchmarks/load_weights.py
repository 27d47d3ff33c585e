r"""Loads one backbone weights file into mmtjax's parameters, as training and evaluation do, and
prints how long each part took (issue 37: .pth against .safetensors, whole-process timings).

  python benchmarks/load_weights.py FILE --backbone dinov2_vitb14

FILE: a .pth, a .safetensors or a Hugging Face snapshot folder (mmtjax.weights.files). Time the
whole process from outside (e.g. /usr/bin/time, several runs) to include Python's and JAX's start;
the lines printed split the in-process time into reading the file and mapping it onto the model.
"""

from __future__ import annotations

import argparse
import platform
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('file')
  parser.add_argument('--backbone', default='dinov2_vitb14')
  args = parser.parse_args()
  start = time.perf_counter()
  import jax
  import numpy as np

  from mmtjax.models import backbones
  from mmtjax.weights import convert, files
  imported = time.perf_counter()
  model = backbones.get_backbone(args.backbone)
  side = 4 * getattr(getattr(model, 'spec', None), 'patch', 8)
  x = np.zeros((1, side, side, 3), np.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train_bn=False))
  read_start = time.perf_counter()
  state = files.read(args.file)
  read = time.perf_counter() - read_start
  load_start = time.perf_counter()
  loaded = convert.load_backbone(args.file, {c: {'encoder': template[c]} for c in template}, model)
  load = time.perf_counter() - load_start
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(loaded))
  print(f'{args.file}: {len(state)} tensors; {n / 1e6:.1f} M parameters of {args.backbone} loaded')
  print(f'import {imported - start:.2f} s; read {read:.2f} s; read + map onto the model {load:.2f} s '
        f'({platform.processor() or platform.machine()}, {jax.devices()[0].platform})')


if __name__ == '__main__':
  main()
