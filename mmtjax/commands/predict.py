r"""Segments your own query images from support images and masks (mmtjax.predict.Predictor).

  python -m mmtjax.commands.predict --workdir W --support a.jpg:a.png [--support b.jpg:b.png] \
      --query q.jpg --out q_mask.png [--query r.jpg --out r_mask.png]
  python -m mmtjax.commands.predict --config configs/default.py:model=prototype \
      --pretrained ~/weights/dinov2_vits14_pretrain.pth --image_size 224 --support a.jpg:a.png --query q.jpg \
      --out q.png --overlay q_overlay.png --probability q_probability.png

--workdir loads a trained run; --config FILE[:ARGS] builds a training-free
method (model=prototype) from its config, with --pretrained, --backbone and
--image_size setting model.pretrained, model.backbone and data.image_size.

Masks are written as 0/255 PNGs at each query's size, never over an existing
file; --overlay writes the query with the predicted mask tinted and outlined,
--probability the foreground probability as an 8-bit grey PNG (0-255); every
path is checked before the model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mmtjax.errors import UserError


def _read(path: str, what: str):
  from mmtjax.data import transforms
  if not os.path.isfile(path):
    raise UserError(f'{what} {path} does not exist')
  with open(path, 'rb') as f:
    image = transforms.decode_image(f.read(), f'{what} {path} (not an image?)')
  return image


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m mmtjax.commands.predict',
                                   description='Segments query images given support images and masks.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='a trained run')
  source.add_argument('--config', help='FILE[:ARGS] of a training-free method, e.g. configs/default.py:model=prototype')
  parser.add_argument('--pretrained', help='with --config: model.pretrained (the backbone weights file)')
  parser.add_argument('--backbone', help='with --config: model.backbone, e.g. dinov2_vits14')
  parser.add_argument('--image_size', type=int, help='with --config: data.image_size, the side the model sees '
                      '(e.g. 224: 16 x 16 tokens of a /14 ViT; configs/default.py says 64, its demo size)')
  parser.add_argument('--support', action='append', required=True, help='IMAGE:MASK (repeat for K shots)')
  parser.add_argument('--query', action='append', required=True)
  parser.add_argument('--out', action='append', required=True, help='mask PNG per --query (never overwritten)')
  parser.add_argument('--overlay', action='append', default=[],
                      help='PNG per --query: the query with the predicted mask tinted and outlined')
  parser.add_argument('--probability', action='append', default=[],
                      help='PNG per --query: the foreground probability, 0-255 grey')
  parser.add_argument('--best', action='store_true', help='the best-by-validation checkpoint')
  parser.add_argument('--step', type=int, default=None)
  parser.add_argument('--adapt_steps', type=int, default=None,
                      help="test-time adaptation steps on the supports first (default: the checkpoint config's "
                           'eval.adapt.steps; 0: off)')
  args = parser.parse_args(argv)
  if args.workdir and (args.pretrained or args.backbone or args.image_size):
    parser.error('--pretrained, --backbone and --image_size go with --config (a trained --workdir has its own)')
  if args.image_size is not None and args.image_size < 1:
    parser.error(f'--image_size must be >= 1, got {args.image_size}')
  from mmtjax import cli
  cli.quiet_libraries()
  cli.compile_cache()
  cli.run(lambda: _predict_files(args), None)


def _predict_files(args) -> None:
  import numpy as np
  from PIL import Image

  from mmtjax.predict import Predictor
  outputs = {'out': args.out, 'overlay': args.overlay, 'probability': args.probability}
  for flag, paths in outputs.items():
    if paths and len(paths) != len(args.query):
      raise UserError(f'give one --{flag} per --query ({len(args.query)} queries, {len(paths)} --{flag})')
  every = [p for paths in outputs.values() for p in paths]
  for flag, paths in outputs.items():
    for out in paths:
      if os.path.exists(out):
        raise UserError(f'--{flag} {out} exists; choose another path (outputs are never overwritten)')
      if every.count(out) > 1:
        raise UserError(f'--{flag} {out} is given twice; each output needs its own path')
      folder = os.path.dirname(os.path.abspath(out))
      if not os.path.isdir(folder):
        raise UserError(f'--{flag} {out}: the folder {folder} does not exist; create it first')
      if not os.access(folder, os.W_OK):
        raise UserError(f'--{flag} {out}: the folder {folder} is not writable')
      if not out.lower().endswith('.png'):
        raise UserError(f'--{flag} {out}: it is written as PNG; give a name ending in .png')
  supports, masks = [], []
  for spec in args.support:
    image, sep, mask = spec.rpartition(':')
    if not sep or not image:
      raise UserError(f'--support {spec!r}: expected IMAGE:MASK')
    supports.append(_read(image, 'support image'))
    masks.append(_read(mask, 'support mask'))
  queries = [_read(q, 'query image') for q in args.query]
  if args.config:
    predictor = Predictor.from_config(_config(args), adapt_steps=args.adapt_steps)
  else:
    predictor = Predictor.from_workdir(args.workdir, best=args.best, step=args.step, adapt_steps=args.adapt_steps)
  named = [spec.rpartition(':')[0] for spec in args.support]
  from mmtjax import visualize
  for i, (query, pred) in enumerate(zip(queries, predictor.segment_many(queries, supports, masks, names=named))):
    _save(Image.fromarray(pred.mask * 255), args.out[i])
    print(f'{args.out[i]}: {int(pred.mask.sum())} foreground pixels of {pred.mask.size}')
    if args.overlay:
      _save(Image.fromarray(visualize.overlay(query, pred.mask, visualize.PREDICTION_COLOUR)), args.overlay[i])
      print(f'{args.overlay[i]}: the query with its mask outlined')
    if args.probability:
      grey = np.clip(np.round(pred.probability * 255), 0, 255).astype(np.uint8)
      _save(Image.fromarray(grey), args.probability[i])
      print(f'{args.probability[i]}: foreground probability x 255')


def _save(image, out: str) -> None:
  """Writes a PNG through a temporary name in its folder (never a half-written file at `out`)."""
  tmp = f'{out}.tmp{os.getpid()}.png'
  image.save(tmp)
  os.replace(tmp, out)


def _config(args):
  """The config of --config FILE[:ARGS] (a config file's get_config(ARGS)), with --pretrained and
  --backbone set; the file is a Python config as train.py and evaluate.py take it."""
  import importlib.util

  path, _, arg = args.config.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'--config {path} does not exist')
  spec = importlib.util.spec_from_file_location('_mmtjax_predict_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  with config.unlocked():
    if args.pretrained:
      config.model.pretrained = args.pretrained
    if args.backbone:
      config.model.backbone = args.backbone
    if args.image_size:
      config.data.image_size = args.image_size
  return config


if __name__ == '__main__':
  main(sys.argv[1:])
