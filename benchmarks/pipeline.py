r"""Episodes/s of the input pipeline alone (decode, augment, batch), by number of workers.

  python benchmarks/pipeline.py                                  # embedded data, 64 px, flip
  python benchmarks/pipeline.py --source jpeg --image_size 473 --augment mmnet --shot 5

--source shapes reads the embedded dataset's 96 px PNG records; --source jpeg
builds an in-memory source of 500 x 375 JPEGs with VOC-like masks (PASCAL-sized
records) so the 473 px MM-Net augmentation can be timed without the real data.
No device work: this measures what the host can feed. Not a test.
"""

import argparse
import io
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, '.')
from mmtjax.data import pipeline  # noqa: E402
from mmtjax.data.episodes import EpisodeSampler, build_class_index  # noqa: E402


def _jpeg_source(n: int = 200):
  rng = np.random.default_rng(0)
  records = []
  for i in range(n):
    image = rng.integers(0, 255, (375, 500, 3), dtype=np.uint8)
    label = np.zeros((375, 500), np.uint8)
    c = i % 20 + 1
    label[60:300, 80:420] = c
    label[59, 80:420] = 255
    buf_i, buf_l = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(buf_i, format='JPEG', quality=90)
    Image.fromarray(label).save(buf_l, format='PNG')
    records.append({'image': buf_i.getvalue(), 'label': buf_l.getvalue(),
                    'classes': np.array([c], np.int32), 'areas': np.array([240 * 340], np.int32)})
  return records


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--source', choices=('shapes', 'jpeg'), default='shapes')
  p.add_argument('--image_size', type=int, default=64)
  p.add_argument('--augment', choices=pipeline.AUGMENTS, default='flip')
  p.add_argument('--shot', type=int, default=1)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--workers', default='1,2,4,8')
  args = p.parse_args()

  if args.source == 'shapes':
    import tensorflow_datasets as tfds

    from mmtjax.data.builders import embedded
    tfds.disable_progress_bar()
    source = embedded.load_builder('default').as_data_source('source_train')
    records = [source[i] for i in range(len(source))]
  else:
    source = records = _jpeg_source()
  index = build_class_index((r['classes'] for r in records), (r['areas'] for r in records), 1)
  sampler = EpisodeSampler(index, tuple(index), args.shot, seed=0)
  print(f'host: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus | '
        f'command: python benchmarks/pipeline.py {" ".join(sys.argv[1:])}')
  print(f'source {args.source}, {args.image_size} px, augment {args.augment}, {args.shot}-shot, '
        f'batch {args.batch}')
  for workers in [int(w) for w in args.workers.split(',')]:
    loader = pipeline.EpisodeLoader(source, image_size=args.image_size, augment=args.augment, seed=0,
                                    num_workers=workers)
    batches = pipeline.train_batches(loader, sampler, start_step=0, num_steps=args.steps + 2,
                                     shape=(1, args.batch))
    next(batches)  # warm-up
    t = time.perf_counter()
    n = sum(1 for _ in zip(range(args.steps), batches))
    rate = n * args.batch / (time.perf_counter() - t)
    print(f'  {workers} worker thread(s): {rate:8.1f} episodes/s')


if __name__ == '__main__':
  main()
