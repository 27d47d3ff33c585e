r"""Every method on a real pretrained DINOv2 ViT-S/14 and real images, against a training-free floor.

Source: CamVid as SegNet distributes it (367 / 101 / 233 street scenes, 11
classes) through the `semantic` builder, with Tree, Car and Pedestrian held
out as unseen classes. Targets: Weizmann horses and PH2 dermoscopy as
`folder` targets, and CamVid's three unseen classes on its test split. Every
setting is chosen on CamVid's validation split (its seen classes), never on a
target.

  # 1. the data, as ../shared/REALDATA.md fetches it (never committed), into folder trees:
  python benchmarks/real_images.py prepare --camvid DIR/dataset --horses DIR/weizmann_horse_db \
      --ph2 'DIR/PH2Dataset/PH2 Dataset images' --out ~/realdata
  # 2. the table (rows below), 1-shot and 5-shot, seeds 0-2:
  python benchmarks/real_images.py run --data ~/realdata --weights ../shared/weights/dinov2_vits14_imgfocus.pth \
      --workdir /tmp/real_images
  # choosing the block a method reads, on CamVid's validation split:
  python benchmarks/real_images.py blocks --data ~/realdata --weights PTH --workdir /tmp/real_blocks

Rows: all foreground and a support colour-histogram classifier (trivial, no
network); prototype (training-free); the baseline, MMT (memory on and off)
and MM-Net trained on CamVid's seen classes, frozen backbone. Numbers print as
a Markdown table with the device, the weights and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from PIL import Image

CAMVID_CLASSES = 'Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist'
UNSEEN = 'Tree,Car,Pedestrian'
TARGETS = ('horses', 'ph2', 'camvid_unseen')


# --- prepare ------------------------------------------------------------------------------------

def _horses(src: str, out: str) -> int:
  """Weizmann horses: rgb/horseNNN.jpg at another scale than figure_ground/horseNNN.jpg (same
  aspect ratio): each photo is resized to its mask's size, written as PNG beside a 0/255 mask."""
  dest = os.path.join(out, 'horses', 'horse')
  os.makedirs(dest, exist_ok=True)
  n = 0
  for name in sorted(os.listdir(os.path.join(src, 'rgb'))):
    stem = os.path.splitext(name)[0]
    mask = Image.open(os.path.join(src, 'figure_ground', name)).convert('L')
    image = Image.open(os.path.join(src, 'rgb', name)).convert('RGB').resize(mask.size, Image.BICUBIC)
    image.save(os.path.join(dest, f'{stem}.png'))
    Image.fromarray(((np.asarray(mask) >= 128) * 255).astype(np.uint8)).save(os.path.join(dest, f'{stem}_mask.png'))
    n += 1
  return n


def _ph2(src: str, out: str) -> int:
  """PH2: IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp and IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp
  (1-bit, one RGB), linked as lesion/IMDxxx.bmp + lesion/IMDxxx_mask.bmp."""
  dest = os.path.join(out, 'ph2', 'lesion')
  os.makedirs(dest, exist_ok=True)
  n = 0
  for case in sorted(os.listdir(src)):
    image = os.path.join(src, case, f'{case}_Dermoscopic_Image', f'{case}.bmp')
    mask = os.path.join(src, case, f'{case}_lesion', f'{case}_lesion.bmp')
    if os.path.isfile(image) and os.path.isfile(mask):
      for target, link in ((image, f'{case}.bmp'), (mask, f'{case}_mask.bmp')):
        path = os.path.join(dest, link)
        if not os.path.lexists(path):
          os.symlink(os.path.abspath(target), path)
      n += 1
  return n


def prepare(args) -> None:
  out = os.path.expanduser(args.out)
  os.makedirs(out, exist_ok=True)
  camvid = os.path.join(out, 'camvid')
  if not os.path.lexists(camvid):
    os.symlink(os.path.abspath(os.path.expanduser(args.camvid)), camvid)
  print(f'camvid -> {os.path.realpath(camvid)}')
  print(f'horses: {_horses(os.path.expanduser(args.horses), out)} images')
  print(f'ph2: {_ph2(os.path.expanduser(args.ph2), out)} images')



# --- configs ------------------------------------------------------------------------------------

IMAGE_SIZE = 224  # 16 x 16 tokens of a ViT-S/14
# A class counts in a CamVid image with >= this many pixels at 480 x 360 (PFENet's 2 x 32 x 32 at
# 473 px): at 224 px such a class still covers about 2 tokens, so no support mask vanishes.
MIN_PIXELS = 2048


def _config(method: str, shot: int, data: str, weights: str, **fields):
  """configs/default.py for `method` on CamVid (Tree, Car, Pedestrian unseen), the real ViT-S/14
  frozen, 224 px; `fields`: 'section.field' -> value overrides."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import default
  c = default.get_config(f'model={method},dataset=semantic,shot={shot}')
  with c.unlocked():
    c.data.manual_dir = os.path.join(data, 'camvid')
    c.data.semantic.ignore_index = 11
    c.data.semantic.classes = CAMVID_CLASSES
    c.data.test_classes = UNSEEN
    c.data.image_size = IMAGE_SIZE
    c.data.min_pixels = MIN_PIXELS
    c.model.backbone = 'dinov2_vits14'
    c.model.pretrained = weights
    for key, value in fields.items():
      node = c
      *parents, leaf = key.split('.')
      for part in parents:
        node = node[part]
      node[leaf] = value
  return c


def _validation_miou(config, variables=None, episodes: int = 100) -> float:
  """1-shot mIoU on CamVid's validation split (seen classes; never a target) of a training-free
  method (variables None) or of given host variables; the first eval mode."""
  from mmtjax import eval_lib, methods, parallel
  from mmtjax.data import datasets, protocols
  from mmtjax.models import get_model
  from mmtjax.state import untrained_variables
  datasets.resolve(config, training=True)
  model = get_model(config, axis_name=parallel.AXIS)
  if variables is None:
    variables = untrained_variables(model, config)
  split = datasets.load_split(config.data, config.data.val_split, training=False)
  protocol = protocols.Protocol('validation', episodes, config.eval.seed + 1, config.data.image_size, 'square')
  mode, kwargs = next(iter(methods.for_config(config).eval_modes.items()))
  report = eval_lib.evaluate_variables(model, parallel.replicate(variables), config, split,
                                       split_name=config.data.val_split, protocol=protocol, modes={mode: kwargs})
  return report['results'][mode]['miou']


def blocks(args) -> None:
  """Prototype matching on CamVid's validation split, one ViT block at a time, normed and raw:
  the choice of what the methods read."""
  rows = []
  for block in args.blocks:
    for norm in (True, False):
      ends = (max(1, block - 3), max(2, block - 2), max(3, block - 1), block)
      cfg = _config('prototype', 1, args.data, args.weights, **{'model.vit_blocks': ends, 'model.vit_norm': norm})
      t = time.time()
      miou = _validation_miou(cfg, episodes=args.episodes)
      rows.append({'block': block, 'norm': norm, 'val_miou': miou})
      print(f'block {block:2d} norm {str(norm):5s}: val mIoU {miou:.2f} ({time.time() - t:.0f} s)', flush=True)
  _write(args.workdir, 'blocks.json', rows)


def _write(workdir: str, name: str, obj) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, name), 'w') as f:
    json.dump(obj, f, indent=1)


def _device() -> str:
  import jax
  d = jax.devices()[0]
  return f'{d.platform} ({d.device_kind}), {os.cpu_count()} cores, {platform.processor() or platform.machine()}'


if __name__ == '__main__':
  p = argparse.ArgumentParser()
  sub = p.add_subparsers(dest='cmd', required=True)
  a = sub.add_parser('prepare')
  a.add_argument('--camvid', required=True)
  a.add_argument('--horses', required=True)
  a.add_argument('--ph2', required=True)
  a.add_argument('--out', required=True)
  a = sub.add_parser('blocks')
  a.add_argument('--data', required=True)
  a.add_argument('--weights', required=True)
  a.add_argument('--workdir', required=True)
  a.add_argument('--blocks', type=lambda v: [int(x) for x in v.split(',')], default=[6, 8, 9, 10, 11, 12])
  a.add_argument('--episodes', type=int, default=100)
  args = p.parse_args()
  {'prepare': prepare, 'blocks': blocks}[args.cmd](args)
