r"""PFENet's original-resolution scoring: on the host (before issue 14) against on the device (not a test).

  python benchmarks/original_scoring.py                 # 473 px output, PASCAL-sized masks, 8 episodes
  python benchmarks/original_scoring.py --size 473 --batch 8 --iters 10

'host': the eval step's [B, 473, 473] foreground-minus-background logits are
copied to the host and each episode is resized there to its mask's longer
side with aligned corners (numpy matmuls), thresholded and counted: the
path evaluation took before. 'device': metrics.original_resolution_counts
inside the jitted step, only [B, 4] counts copied back. Prints ms per batch
and per episode and the bytes each path copies to the host per episode, on
whatever device JAX picks.
"""

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, '.')
from mmtjax import metrics, ops  # noqa: E402

# PASCAL VOC image sizes are at most 500 x 500; these are common ones.
SIZES = [(375, 500), (500, 375), (333, 500), (500, 333), (366, 500), (281, 500), (500, 400), (335, 500)]


def host_counts(diff: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The host path: [h, w] logit difference -> [4] counts at the mask's resolution."""
  h, w = mask.shape
  size = max(h, w)
  up = ops.align_corners_matrix(diff.shape[0], size) @ diff @ ops.align_corners_matrix(diff.shape[1], size).T
  pred = up[:h, :w] > 0
  return metrics.prediction_counts(pred, mask)


def _median(fn, iters):
  fn()
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=473)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--iters', type=int, default=10)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  masks = [rng.choice([0, 1, 255], size=SIZES[i % len(SIZES)], p=[.6, .35, .05]).astype(np.uint8)
           for i in range(args.batch)]
  diffs = jnp.asarray(rng.normal(size=(args.batch, args.size, args.size)), jnp.float32)
  canvas, sizes = metrics.original_canvas(masks)
  canvas, sizes = jnp.asarray(canvas), jnp.asarray(sizes)
  # The eval step's output in each path: logits to copy, or counts computed on the device.
  logits = jax.jit(lambda d: d + 0)
  counts = jax.jit(metrics.original_resolution_counts)

  def host():
    out = np.asarray(logits(diffs))
    return np.stack([host_counts(d, m) for d, m in zip(out, masks)])

  def device():
    return np.asarray(counts(diffs, canvas, sizes))

  # The same counts, up to a pixel whose interpolated logit is within float rounding of 0.
  print('largest count difference, host vs device:', int(np.abs(host() - device()).max()))
  print(f'device {jax.devices()[0].device_kind} x1, jax {jax.__version__}; {args.batch} episodes, '
        f'{args.size} x {args.size} output, masks up to 500 x 500')
  print('command: python benchmarks/original_scoring.py ' + ' '.join(sys.argv[1:]))
  for name, fn, copied in (('host', host, args.size * args.size * 4), ('device', device, 4 * 4)):
    t = _median(fn, args.iters)
    print(f'{name:7s} {1e3 * t:8.1f} ms per batch = {1e3 * t / args.batch:6.2f} ms per episode; '
          f'{copied:,} B copied to the host per episode')


if __name__ == '__main__':
  main()
