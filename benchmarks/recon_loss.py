r"""MM-Net's reconstruction loss: the official [P, P] form against the exact cheaper forms (not a test).

  python benchmarks/recon_loss.py                       # 60 x 60 features (473 px), 2 images
  python benchmarks/recon_loss.py --size 60 --images 16 --blocks 0,512,900

For value + gradient (w.r.t. the memory and the features) of
  - 'official': R = M softmax(A), G = R F^T (rank D = 256), log-softmax over i,
  - 'rank-N': G = softmax(A) A^T (rank N = 50, the same numbers), whole,
  - 'rank-N block b': the same, b columns at a time (no [P, P] matrix held),
prints the median time, XLA's FLOPs and the compiled temporaries, and the
largest difference from the official loss, on whatever device JAX picks.
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, '.')
from mmtjax.models.meta_class import reconstruction_loss  # noqa: E402


def official(memory, feats):
  act = jnp.einsum('bpd,dn->bpn', feats, memory)
  recon = jnp.einsum('bin,dn->bid', jax.nn.softmax(act, axis=-1), memory)
  g = jnp.einsum('bid,bjd->bij', recon, feats)
  return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(g, axis=1), axis1=1, axis2=2))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=60, help='feature side (60 at 473 px)')
  parser.add_argument('--images', type=int, default=2, help='images per device (B x (K + 1))')
  parser.add_argument('--dim', type=int, default=256)
  parser.add_argument('--items', type=int, default=50)
  parser.add_argument('--blocks', default='0,600,1200')
  parser.add_argument('--iters', type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  p = args.size * args.size
  # Features at the scale of a ReLU'd 1x1 conv, the memory N(0, 1) as initialised.
  feats = jnp.asarray(np.maximum(rng.normal(size=(args.images, p, args.dim)), 0) * 0.1, jnp.float32)
  memory = jnp.asarray(rng.normal(size=(args.dim, args.items)), jnp.float32)
  forms = {'official': official}
  for b in (int(x) for x in args.blocks.split(',')):
    forms['rank-N' if b == 0 else f'rank-N block {b}'] = (lambda m, f, b=b: reconstruction_loss(m, f, b))
  print(f'device {jax.devices()[0].device_kind} x1, jax {jax.__version__}; {args.images} images of '
        f'{args.size} x {args.size} = {p} pixels, D {args.dim}, N {args.items}')
  print('command: python benchmarks/recon_loss.py ' + ' '.join(sys.argv[1:]))
  reference = None
  for name, fn in forms.items():
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    compiled = step.lower(memory, feats).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    temp = compiled.memory_analysis().temp_size_in_bytes
    loss = float(jax.block_until_ready(compiled(memory, feats))[0])
    reference = loss if reference is None else reference
    times = []
    for _ in range(args.iters):
      t = time.perf_counter()
      jax.block_until_ready(compiled(memory, feats))
      times.append(time.perf_counter() - t)
    # XLA's cost analysis counts a loop's body once: the blocked forms' FLOPs are not comparable.
    flops = f'{cost.get("flops", 0) / 1e9:8.2f} GFLOP' if 'block' not in name else '   (loop) GFLOP'
    print(f'{name:20s} {1e3 * statistics.median(times):9.1f} ms  {flops}  '
          f'temporaries {temp / 2**20:8.1f} MiB  loss {loss:.6f} (diff {abs(loss - reference):.1e})')


if __name__ == '__main__':
  main()
