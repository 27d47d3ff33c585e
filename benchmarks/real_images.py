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
  # and the 1-shot adapted rows (copy-paste pseudo-shots) and prototype's per-episode block choice,
  # on the same trained seeds; then one table of both:
  python benchmarks/real_images.py run ... --workdir /tmp/real_images --rows prototype_choice,baseline,mmt \
      --adapt_steps 5 --adapt_shots 1 --adapted_only --reuse_training --result one_shot.json
  python benchmarks/real_images.py table /tmp/real_images/real_images.json /tmp/real_images/one_shot.json
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
    # Flips (unless METHODS or --set say otherwise): a frozen backbone's features are then computed
    # once per image (feature_cache.py).
    c.data.augment = 'flip'
    c.model.backbone = 'dinov2_vits14'
    c.model.pretrained = weights
    for key, value in fields.items():
      node = c
      *parents, leaf = key.split('.')
      for part in parents:
        node = node[part]
      node[leaf] = tuple(value) if isinstance(value, list) else value  # (JSON lists: config tuples)
  return c


def _validation_miou(config, variables=None, episodes: int = 100, classes: str = 'seen',
                     adapt_steps: int = 0) -> float:
  """1-shot mIoU on CamVid's validation split (never a target) of a training-free method
  (variables None) or of given host variables; the first eval mode. `classes`: 'seen' (the
  classes the methods train on) or 'unseen' (Tree, Car, Pedestrian on the validation images:
  what generalising to classes never trained on asks; the camvid_unseen target reads the test
  images)."""
  import dataclasses

  from mmtjax import evaluation, methods, parallel
  from mmtjax.data import datasets, protocols
  from mmtjax.data import episodes as episodes_lib
  from mmtjax.models import get_model
  from mmtjax.state import untrained_variables
  datasets.resolve(config, training=True)
  model = get_model(config, axis_name=parallel.AXIS)
  if variables is None:
    variables = untrained_variables(model, config)
  split = datasets.load_split(config.data, config.data.val_split, training=False)
  if classes == 'unseen':
    index = episodes_lib.cached_class_index(split.source, split.cache_dir, split.name, config.data.min_pixels,
                                            config.data.image_size)
    novel = tuple(split.class_names.index(n) + 1 for n in UNSEEN.split(','))
    split = dataclasses.replace(split, index={c: index[c] for c in novel if c in index}, classes=novel)
  protocol = protocols.Protocol('validation', episodes, config.eval.seed + 1, config.data.image_size, 'square')
  method = methods.for_config(config)
  mode, kwargs = next(iter(method.eval_modes.items()))
  if adapt_steps:
    from mmtjax import adapt
    with config.unlocked():
      config.eval.adapt.steps = adapt_steps
    kwargs = (kwargs, adapt.from_config(config, method))
  report = evaluation.evaluate_variables(model, parallel.replicate(variables), config, split,
                                       split_name=config.data.val_split, protocol=protocol, modes={mode: kwargs})
  return report['results'][mode]['miou']


def _trained_variables(workdir: str):
  """Host variables of the latest checkpoint of a training workdir."""
  import jax

  from mmtjax import predict
  return jax.device_get(predict.Predictor.from_workdir(workdir).variables)


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



# --- the trivial rows, as training-free methods on the same episodes ----------------------------

def _register_trivial() -> None:
  """'all_foreground' and 'colour_histogram' (a support colour-histogram classifier: 8 bins per
  channel of the normalised RGB, foreground and background histograms of the K supports with
  add-one smoothing, each query pixel to the likelier one), registered as methods so that they
  score exactly the episodes the other rows score."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from mmtjax import methods
  from mmtjax.methods.base import Method

  class AllForeground(nn.Module):
    @nn.compact
    def __call__(self, support_images, support_labels, query_images, *, train, transfer=True):
      zero = query_images[..., 0] * 0.0  # from the input: a constant would be folded at compile time
      return {'logits': jnp.stack([zero, zero + 1.0], axis=-1)}

  class ColourHistogram(nn.Module):
    bins: int = 8

    def _codes(self, x):  # normalised RGB (about -2.1..2.6) -> one histogram bin per pixel
      q = jnp.clip(((x + 2.2) / 4.9 * self.bins).astype(jnp.int32), 0, self.bins - 1)
      return (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]

    @nn.compact
    def __call__(self, support_images, support_labels, query_images, *, train, transfer=True):
      n = self.bins ** 3
      codes = jax.nn.one_hot(self._codes(support_images), n)  # [B, K, H, W, n]
      fg = (support_labels == 1)[..., None]
      bg = (support_labels == 0)[..., None]
      h_fg = (codes * fg).sum((1, 2, 3)) + 1.0
      h_bg = (codes * bg).sum((1, 2, 3)) + 1.0
      log_ratio = jnp.log(h_fg / h_fg.sum(-1, keepdims=True)) - jnp.log(h_bg / h_bg.sum(-1, keepdims=True))
      q = jax.nn.one_hot(self._codes(query_images), n)  # [B, H, W, n]
      score = jnp.einsum('bhwn,bn->bhw', q, log_ratio)
      return {'logits': jnp.stack([jnp.zeros_like(score), score], axis=-1)}

  class Trivial(Method):
    trainable = False

    def __init__(self, name, module):
      self.name, self.module = name, module
      self.eval_modes = {name: {}}

    def config(self, variant='paper'):
      return {'model': {'name': self.name}}

    def build(self, config, axis_name=None):
      return self.module()

  for name, module in (('all_foreground', AllForeground), ('colour_histogram', ColourHistogram)):
    if name not in methods.names():
      methods.register(Trivial(name, module))


# --- the table ----------------------------------------------------------------------------------

# Settings chosen on CamVid's validation split (`blocks`, `choice`, and docs/assumptions.md "Real images").
PROTOTYPE = {}
# Per episode, the best of raw blocks 8-11 by leave-one-out on the supports (1-shot: on the support
# and two copy-paste copies of it): the row 'prototype+choice'.
PROTOTYPE_CHOICE = {'model.vit_blocks': (8, 9, 10, 11), 'model.feature_stages': ('layer1', 'layer2', 'layer3', 'layer4'),
                    'model.choose_stages': 1}
TRAIN = {'train.num_steps': 300, 'train.batch_size': 4, 'train.lr': 1e-3, 'train.warmup_steps': 20,
         'train.eval_every': 0, 'train.log_every': 50, 'train.checkpoint_every': 300, 'train.log_panels': 0}
_READ = {'model.vit_blocks': (3, 6, 9, 10), 'model.vit_norm': False}  # layer3 = block 9, layer4 = block 10, raw
# The trained neck's learning rate: 1e-4 keeps more of what the ViT knows about classes it never
# trains on (CamVid validation, seed 0, seen / unseen mIoU: baseline 1e-3 46.74 / 37.16, 3e-4 46.62 /
# 43.67, 1e-4 44.09 / 47.06, 3e-5 41.29 / 46.96; MMT 1e-3 47.18 / 37.70, 3e-4 46.98 / 43.91, 1e-4
# 44.68 / 47.27; docs/assumptions.md "Real images"). MM-Net keeps TRAIN's 1e-3 (its head is trained from
# scratch; not re-chosen this round).
_NECK_LR = {'train.lr': 1e-4}
METHODS = {  # method -> its fields, beside TRAIN (select: docs/assumptions.md "Real images")
    'baseline': {**_READ, **_NECK_LR, 'model.feature_stages': ('layer3', 'layer4'), 'model.memory_stage': 'layer4',
                 'model.neck': 'residual'},
    'mmt': {**_READ, **_NECK_LR, 'model.feature_stages': ('layer3', 'layer4'), 'model.memory_stage': 'layer3',
            'model.neck': 'residual'},
    # MM-Net's own augmentation wins on validation (seen / unseen 33.84 / 16.03 against 27.58 / 12.47
    # with flips, seed 0) but trains without the feature cache (+8 min over 3 seeds, past the 60-minute
    # budget): `run --set mmnet:data.augment=mmnet` gives its rows (README, "Real images").
    'mmnet': {**_READ, 'model.prior_stage': 'layer4', 'model.reduce_dim': 256},
}


def _sweep(config, workdir: str, args, shots, seeds=None, adapt_steps: int = 0) -> dict:
  from mmtjax import sweeps
  with config.unlocked():
    config.eval.num_episodes = args.episodes
    config.eval.batch_size = 8
    config.eval.adapt.steps = adapt_steps
  manual = {'horses': os.path.join(args.data, 'horses'), 'ph2': os.path.join(args.data, 'ph2')}
  return sweeps.sweep(config, workdir, test_datasets=['semantic', 'horses=folder', 'ph2=folder'],
                        shots=list(shots), seeds=seeds, manual_dirs=manual)


def _speed(report: dict) -> dict:
  """Evaluation episodes/s per shot (the mean over the sweep's runs, compiling batches excluded)."""
  out = {}
  for r in report.get('runs', [report]):
    if r.get('episodes_per_s'):
      out.setdefault(str(r['shot']), []).append(r['episodes_per_s'])
  return {shot: round(float(np.mean(v)), 2) for shot, v in out.items()}


def _rows(report: dict, label: str | None = None, suffix: str = '') -> list[dict]:
  out = []
  for r in report['summary']:
    out.append({'row': (label or r['mode']) + suffix, 'dataset': {'semantic': 'camvid_unseen'}.get(r['dataset'], r['dataset']),
                'shot': r['shot'], 'miou': r['miou'], 'mean': r['miou_mean'], 'std': r['miou_std']})
  return out


def select(args) -> None:
  """Trains `--method` (seed 0) under each candidate setting and scores it on CamVid's validation
  split, its seen and its unseen classes: the choices behind METHODS (never a target). With
  `--trained`, scores existing training workdirs (one per candidate) instead of training."""
  from mmtjax import train_lib
  rows = []
  for i, fields in enumerate(json.loads(args.candidates)):
    cfg = _config(args.method, 1, args.data, args.weights, **{**TRAIN, **fields})
    where = args.trained[i] if args.trained else os.path.join(args.workdir, f'{args.method}_{i}')
    t = time.time()
    if not args.trained:
      train_lib.train(cfg, where)
    train_s = time.time() - t
    variables = _trained_variables(where)
    miou = {c: _validation_miou(cfg, variables, args.episodes, c) for c in ('seen', 'unseen')}
    rows.append({'method': args.method, 'fields': fields, 'workdir': where, 'val_miou': miou['seen'],
                 'val_unseen_miou': miou['unseen'], 'train_s': train_s})
    print(f"{args.method} {fields}: val mIoU seen {miou['seen']:.2f}, unseen {miou['unseen']:.2f} "
          f'(training {train_s:.0f} s)', flush=True)
  _write(args.workdir, f'select_{args.method}.json', rows)


def adaptation(args) -> None:
  """Test-time adaptation steps (and `--loss`) for the adapted rows, chosen on CamVid's validation
  split (seen and unseen classes) with the trained `--trained` workdir of `--method` (METHODS'
  settings)."""
  from mmtjax.data.episodes import ShotCountError
  rows = []
  for steps in args.steps:
    cfg = _config(args.method, args.shot, args.data, args.weights,
                  **{**TRAIN, **METHODS[args.method], 'eval.adapt.loss': args.loss})
    t = time.time()
    miou = {}
    for c in ('seen', 'unseen'):
      try:
        miou[c] = _validation_miou(cfg, _trained_variables(args.trained), args.episodes, c, steps)
      except ShotCountError as e:  # CamVid's validation Pole: 4 images with >= MIN_PIXELS of it
        print(f'{c} classes: {e}', flush=True)
        miou[c] = None
    rows.append({'method': args.method, 'shot': args.shot, 'adapt_steps': steps, 'loss': args.loss,
                 'val_miou': miou['seen'],
                 'val_unseen_miou': miou['unseen'], 's': time.time() - t})
    print(f"{args.method} {args.shot}-shot, {steps} adaptation steps ({args.loss}): val mIoU seen "
          f"{miou['seen']}, unseen {miou['unseen']:.2f} ({time.time() - t:.0f} s)", flush=True)
  _write(args.workdir, f'adaptation_{args.method}_{args.shot}shot_{args.loss}.json', rows)


def choice(args) -> None:
  """`prototype` under each candidate setting (e.g. per-episode stage choice: model.choose_stages)
  on CamVid's validation split, seen and unseen classes, for each of `--shots`: the choices
  behind PROTOTYPE_CHOICE (never a target)."""
  from mmtjax.data.episodes import ShotCountError
  rows = []
  for fields in json.loads(args.candidates):
    for shot in args.shots:
      cfg = _config('prototype', shot, args.data, args.weights, **fields)
      t = time.time()
      miou = {}
      for c in ('seen', 'unseen'):
        try:
          miou[c] = _validation_miou(cfg, None, args.episodes, c)
        except ShotCountError as e:  # CamVid's validation Pole: 4 images with >= MIN_PIXELS of it
          print(f'{c} classes: {e}', flush=True)
          miou[c] = None
      rows.append({'fields': fields, 'shot': shot, 'val_miou': miou['seen'], 'val_unseen_miou': miou['unseen'],
                   's': time.time() - t})
      print(f"prototype {fields} {shot}-shot: val mIoU seen {miou['seen']}, unseen {miou['unseen']:.2f} "
            f'({time.time() - t:.0f} s)', flush=True)
  _write(args.workdir, 'choice_prototype.json', rows)


def floor(args) -> None:
  """The training-free floor on the same validation episodes: prototype, seen and unseen classes."""
  cfg = _config('prototype', 1, args.data, args.weights, **PROTOTYPE)
  rows = {c: _validation_miou(cfg, None, args.episodes, c) for c in ('seen', 'unseen')}
  print(f"prototype: val mIoU seen {rows['seen']:.2f}, unseen {rows['unseen']:.2f}", flush=True)
  _write(args.workdir, 'floor.json', rows)


def _overrides(items: list[str]) -> dict[str, dict]:
  """--set METHOD:section.field=VALUE (VALUE read as JSON, else a string) -> {method: {field: value}}."""
  out: dict[str, dict] = {}
  for item in items:
    method, _, assignment = item.partition(':')
    key, sep, value = assignment.partition('=')
    if method not in METHODS or not sep or '.' not in key:
      raise SystemExit(f'error: --set takes METHOD:section.field=VALUE with METHOD one of {list(METHODS)}, got {item!r}')
    try:
      parsed = json.loads(value)
    except json.JSONDecodeError:
      parsed = value
    out.setdefault(method, {})[key] = parsed
  return out


def run(args) -> None:
  from mmtjax import train_lib
  _register_trivial()
  t0 = time.time()
  rows, timing, speed = [], {}, {}
  only = set(args.rows)
  free = {'all_foreground': ('all_foreground', {}), 'colour_histogram': ('colour_histogram', {}),
          'prototype': ('prototype', PROTOTYPE), 'prototype_choice': ('prototype', PROTOTYPE_CHOICE)}
  for name, (method, fields) in free.items():
    if name not in only:
      continue
    t = time.time()
    cfg = _config(method, 1, args.data, args.weights if method == 'prototype' else None, **fields)
    report = _sweep(cfg, os.path.join(args.workdir, name), args, args.shots)
    rows += _rows(report, label='prototype+choice' if name == 'prototype_choice' else None)
    speed[f'{name} evaluation episodes/s'] = _speed(report)
    timing[name] = time.time() - t
    print(f'{name}: {timing[name]:.0f} s', flush=True)
  overrides = _overrides(args.set)
  for name, fields in METHODS.items():
    if name not in only:
      continue
    fields = {**fields, **overrides.get(name, {})}
    t = time.time()
    seeds = args.method_seeds.get(name, args.seeds)
    per_seed = []
    for seed in seeds:
      cfg = _config(name, 1, args.data, args.weights, **{**TRAIN, **fields}, seed=seed)
      ts = time.time()
      where = os.path.join(args.workdir, name, str(seed))
      if not (args.reuse_training and os.path.isdir(os.path.join(where, 'checkpoints'))):
        train_lib.train(cfg, where)
      per_seed.append(round(time.time() - ts, 1))
    timing[f'{name} training'] = time.time() - t
    speed[f'{name} training s per seed (300 steps, compiling and first feature pass included)'] = per_seed
    t = time.time()
    cfg = _config(name, 1, args.data, args.weights, **{**TRAIN, **fields})
    where = os.path.join(args.workdir, name, '{seed}')
    if not args.adapted_only:
      report = _sweep(cfg, where, args, args.shots, seeds=seeds)
      rows += _rows(report, label=None)
      speed[f'{name} evaluation episodes/s'] = _speed(report)
    if args.adapt_steps and name in args.adapt_methods:
      adapt_seeds = seeds[:args.adapt_seed_count]
      report = _sweep(cfg, where, args, args.adapt_shots, seeds=adapt_seeds, adapt_steps=args.adapt_steps)
      rows += [r for r in _rows(report) if r['row'].endswith('+adapt')]
      speed[f'{name} adapted evaluation episodes/s'] = _speed(report)
    timing[f'{name} evaluation'] = time.time() - t
    print(f'{name}: {timing[f"{name} training"]:.0f} s training, {timing[f"{name} evaluation"]:.0f} s evaluation',
          flush=True)
  wall = time.time() - t0
  result = {'rows': rows, 'timing_s': timing, 'speed': speed, 'wall_s': wall, 'device': _device(),
            'command': ' '.join(sys.argv),
            'weights': args.weights, 'image_size': IMAGE_SIZE, 'episodes': args.episodes, 'seeds': args.seeds,
            'method_seeds': args.method_seeds}
  _write(args.workdir, args.result, result)
  print(table(result))


def tables(args) -> None:
  """The Markdown table of one or more `run` results (rows of later files after earlier ones'; a
  row, target and shot of a later file replaces an earlier one's)."""
  results = [json.load(open(f)) for f in args.results]
  cells = {}
  for r in results:
    for row in r['rows']:
      cells[(row['row'], row['dataset'], row['shot'])] = row
  merged = {**results[0], 'rows': list(cells.values()), 'wall_s': sum(r['wall_s'] for r in results),
            'command': ' + '.join(f"`{r['command']}`" for r in results).strip('`')}
  print(table(merged))


def table(result: dict) -> str:
  """Markdown: one row per method (mode), columns target x shot, then the mean of the targets."""
  rows = result['rows']
  cols = [(d, s) for s in sorted({r['shot'] for r in rows}) for d in (*TARGETS, 'mean')]
  names = list(dict.fromkeys(r['row'] for r in rows))
  cell = {(r['row'], r['dataset'], r['shot']): r for r in rows}
  lines = ['| row | ' + ' | '.join(f'{d} {s}-shot' for d, s in cols) + ' |', '|---' * (len(cols) + 1) + '|']
  for n in names:
    texts = []
    for d, s in cols:
      r = cell.get((n, d, s))
      texts.append('-' if r is None else (f"{r['mean']:.1f}" if r['std'] is None or len(r['miou']) < 2
                                          else f"{r['mean']:.1f} ± {r['std']:.1f}"))
    lines.append(f'| {n} | ' + ' | '.join(texts) + ' |')
  lines.append('')
  lines.append(f"mIoU; {result['episodes']} episodes per target and shot; {result['image_size']} px; weights "
               f"{result['weights']}; device {result['device']}; wall {result['wall_s'] / 60:.1f} min; "
               f"seeds {result['seeds']} (mean ± std over training runs); `{result['command']}`")
  return '\n'.join(lines)


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
  a = sub.add_parser('run')
  a.add_argument('--data', required=True)
  a.add_argument('--weights', required=True)
  a.add_argument('--workdir', required=True)
  a.add_argument('--rows', type=lambda v: v.split(','),
                 default=['all_foreground', 'colour_histogram', 'prototype', *METHODS],
                 help='rows to run; prototype_choice (per-episode block choice) is one more')
  a.add_argument('--shots', type=lambda v: [int(x) for x in v.split(',')], default=[1, 5])
  a.add_argument('--seeds', type=lambda v: [int(x) for x in v.split(',')], default=[0, 1, 2])
  a.add_argument('--episodes', type=int, default=100)
  a.add_argument('--adapt_steps', type=int, default=0, help='rows adapted with this many steps (0: none)')
  a.add_argument('--adapt_shots', type=lambda v: [int(x) for x in v.split(',')], default=[5],
                 help="the shots of the adapted rows (eval.adapt.loss 'auto': 1-shot copy_paste, 5-shot "
                      'leave-one-out)')
  a.add_argument('--adapted_only', action='store_true', help='the trained methods: only their adapted rows')
  a.add_argument('--result', default='real_images.json', help='the JSON file written in --workdir')
  a.add_argument('--reuse_training', action='store_true',
                 help='a seed whose workdir holds checkpoints is not trained again (its time is not training)')
  a.add_argument('--set', action='append', default=[], metavar='METHOD:FIELD=VALUE',
                 help="a trained method's setting over METHODS', e.g. mmnet:data.augment=mmnet (repeatable)")
  a.add_argument('--adapt_methods', type=lambda v: v.split(','), default=['baseline', 'mmt'])
  a.add_argument('--adapt_seed_count', type=int, default=3, help='the first N of --seeds for the adapted rows')
  a.add_argument('--method_seeds', type=json.loads, default={},
                 help='JSON {method: [seeds]} where a method trains other seeds than --seeds')
  a = sub.add_parser('select')
  a.add_argument('--method', required=True)
  a.add_argument('--candidates', required=True, help='JSON list of {"section.field": value} settings')
  a.add_argument('--data', required=True)
  a.add_argument('--weights', required=True)
  a.add_argument('--workdir', required=True)
  a.add_argument('--episodes', type=int, default=100)
  a.add_argument('--trained', type=lambda v: v.split(','), default=None,
                 help='existing training workdirs, one per candidate: score them instead of training')
  a = sub.add_parser('floor')
  a.add_argument('--data', required=True)
  a.add_argument('--weights', required=True)
  a.add_argument('--workdir', required=True)
  a.add_argument('--episodes', type=int, default=100)
  a = sub.add_parser('adaptation')
  a.add_argument('--method', required=True)
  a.add_argument('--trained', required=True, help='a training workdir of --method with METHODS settings')
  a.add_argument('--steps', type=lambda v: [int(x) for x in v.split(',')], default=[0, 5, 10])
  a.add_argument('--shot', type=int, default=5)
  a.add_argument('--loss', default='auto', help="eval.adapt.loss ('auto', 'copy_paste', 'augment', ...)")
  a.add_argument('--data', required=True)
  a.add_argument('--weights', required=True)
  a.add_argument('--workdir', required=True)
  a.add_argument('--episodes', type=int, default=100)
  a = sub.add_parser('choice')
  a.add_argument('--candidates', required=True, help='JSON list of {"section.field": value} settings')
  a.add_argument('--shots', type=lambda v: [int(x) for x in v.split(',')], default=[1, 5])
  a.add_argument('--data', required=True)
  a.add_argument('--weights', required=True)
  a.add_argument('--workdir', required=True)
  a.add_argument('--episodes', type=int, default=100)
  a = sub.add_parser('table')
  a.add_argument('results', nargs='+', help='real_images.json files of `run`')
  args = p.parse_args()
  {'table': tables, 'select': select, 'prepare': prepare, 'blocks': blocks, 'run': run, 'floor': floor,
   'adaptation': adaptation, 'choice': choice}[args.cmd](args)
