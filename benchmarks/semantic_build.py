r"""Size and time of preparing a label-index dataset with the `semantic` builder (not a test).

  python benchmarks/semantic_build.py --out /tmp/semantic_bench [--images 701 --height 360 --width 480]

Writes a CamVid-shaped tree as SegNet ships it (train/ 367, val/ 101, test/ 233
images at 480 x 360, RGB PNG; trainannot/ ... 8-bit label PNGs, 11 classes +
void 11), scenes of textured class regions so the PNGs compress as photos of
the same size do not (each image about as large as CamVid's), then builds it
with the semantic builder and indexes its classes, and prints: raw bytes,
prepared bytes (the tfds folder), build seconds, class-index seconds, and
what the one-binary-mask-per-class converter route would store (each image
once per class it holds, plus a mask each), counted from the same files.
"""

import argparse
import os
import shutil
import sys
import time

import jax
import numpy as np
from PIL import Image

sys.path.insert(0, '.')
from mmtjax.data import datasets, episodes  # noqa: E402

CAMVID = ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol', 'Fence', 'Car', 'Pedestrian',
          'Bicyclist')
SPLITS = (('train', 367), ('val', 101), ('test', 233))


def _scene(rng, h, w):
  """(RGB image, label map): horizontal bands (sky, building, road) and boxes of the other classes,
  each region a class colour with per-pixel noise (PNG-compresses like a photo)."""
  label = np.zeros((h, w), np.uint8)
  label[h // 3:2 * h // 3] = 1
  label[2 * h // 3:] = 3
  for c in rng.choice(np.arange(2, 11), size=5, replace=False):
    y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
    label[y:y + rng.integers(20, 80), x:x + rng.integers(20, 120)] = c
  label[rng.random((h, w)) < 0.02] = 11  # void specks, as on CamVid's object borders
  colours = rng.integers(0, 255, (12, 3))
  image = colours[label] + rng.normal(0, 18, (h, w, 3))
  return np.clip(image, 0, 255).astype(np.uint8), label


def _tree(root, n, h, w):
  rng = np.random.default_rng(0)
  scale = n / sum(c for _, c in SPLITS)
  for split, count in SPLITS:
    os.makedirs(os.path.join(root, split))
    os.makedirs(os.path.join(root, f'{split}annot'))
    for i in range(max(1, round(count * scale))):
      image, label = _scene(rng, h, w)
      name = f'0001TP_{i:06d}.png'
      Image.fromarray(image).save(os.path.join(root, split, name))
      Image.fromarray(label).save(os.path.join(root, f'{split}annot', name))


def _bytes(path):
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--out', required=True)
  p.add_argument('--images', type=int, default=701)
  p.add_argument('--height', type=int, default=360)
  p.add_argument('--width', type=int, default=480)
  a = p.parse_args()
  if os.path.exists(a.out):
    raise SystemExit(f'error: {a.out} exists; give a new folder (it is written and kept)')
  root, data_dir = os.path.join(a.out, 'CamVid'), os.path.join(a.out, 'tfds')
  _tree(root, a.images, a.height, a.width)
  raw_bytes = _bytes(root)
  converter = 0  # one copy of the image and one binary mask per class present (the folder route)
  for split, _ in SPLITS:
    for name in os.listdir(os.path.join(root, split)):
      present = len(set(np.unique(np.asarray(Image.open(os.path.join(root, f'{split}annot', name))))) - {11})
      mask = os.path.getsize(os.path.join(root, f'{split}annot', name))  # a binary PNG is no larger
      converter += present * (os.path.getsize(os.path.join(root, split, name)) + mask)
  t0 = time.perf_counter()
  opts = {'classes': ','.join(CAMVID), 'ignore_index': 11}
  builder = datasets.load_raw_builder('semantic', data_dir, root, layout=opts)
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for split, _ in SPLITS:
    source = datasets.open_source(builder, split)
    episodes.cached_class_index(source, os.fspath(builder.data_dir), split, 48)
  index_s = time.perf_counter() - t0
  prepared = _bytes(os.fspath(builder.data_dir))
  print(f'device: {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs | command: {" ".join(sys.argv)}')
  print(f'{a.images} images {a.width} x {a.height}: raw {raw_bytes / 1e6:.1f} MB, prepared {prepared / 1e6:.1f} MB '
        f'({prepared / raw_bytes:.2f}x), binary-folder converter route {converter / 1e6:.1f} MB '
        f'({converter / raw_bytes:.2f}x); build {build_s:.1f} s, class index (3 splits) {index_s:.1f} s')
  shutil.rmtree(os.path.join(a.out, 'CamVid'))  # the generated raw files; the prepared data stays


if __name__ == '__main__':
  main()
