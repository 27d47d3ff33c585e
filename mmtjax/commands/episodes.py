r"""Writes a dataset's test episodes as a JSON-lines file (mmtjax.data.episodes).

  python -m mmtjax.commands.episodes --dataset fss1000 --protocol hsnet --shot 1 \
      --manual_dir ~/data/FSS-1000 --data_dir ~/tensorflow_datasets --out fss_1shot.jsonl

The defaults equal a config's (protocol, episode count, seed, min_pixels, image_size), so
the list's SHA-256 equals the one an evaluation report records when no flag
is given. The list is written atomically and never replaces a file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mmtjax.data.episodes import MIN_PIXELS
from mmtjax.data.protocols import CUSTOM_EPISODES, CUSTOM_SEED
from mmtjax.errors import UserError


def main(argv: Sequence[str] | None = None) -> None:
  """python -m mmtjax.commands.episodes: writes a dataset's test episodes as JSON lines."""
  parser = argparse.ArgumentParser(prog='python -m mmtjax.commands.episodes', description=main.__doc__)
  parser.add_argument('--dataset', required=True)
  parser.add_argument('--protocol', default=None, help="'hsnet' (the anchors' episodes), 'uniform', 'pfenet' or "
                      "'custom' (default: the dataset's own, as a config gets it)")
  parser.add_argument('--shot', type=int, default=1)
  parser.add_argument('--fold', type=int, default=-1)
  parser.add_argument('--split', default=None, help="default: the dataset's test split")
  parser.add_argument('--manual_dir', default=None)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--fold_list', default=None, help="HSNet's fold list (PASCAL .txt, COCO .pkl)")
  parser.add_argument('--class_list', default=None, help="ISIC: PATNet's class_id.csv")
  parser.add_argument('--num_episodes', type=int, default=CUSTOM_EPISODES,
                      help="protocol 'custom' only (default: as the config's eval.num_episodes)")
  parser.add_argument('--seed', type=int, default=CUSTOM_SEED, help="protocol 'custom' only (as eval.seed)")
  parser.add_argument('--min_pixels', type=int, default=MIN_PIXELS,
                      help="protocols other than 'hsnet': as the config's data.min_pixels")
  parser.add_argument('--image_size', type=int, default=64,
                      help="folder / semantic: as the config's data.image_size (configs/default.py: 64); a class "
                      'counts in an image only if it survives the resize to it')
  parser.add_argument('--target', action='store_true', help='folder / semantic: the dataset as the target of a '
                      'model trained elsewhere (every class a test class); default: tested on itself (its fold)')
  parser.add_argument('--test_classes', default=None, help='semantic: the held-out classes (as data.test_classes)')
  parser.add_argument('--semantic', action='append', default=[], metavar='KEY=VALUE',
                      help='semantic: a data.semantic field, e.g. --semantic ignore_index=11 --semantic classes=a,b')
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  from mmtjax import cli
  cli.quiet_libraries()
  cli.run(lambda: _write_list(args))


def _write_list(args) -> None:
  import ml_collections

  from mmtjax.data import datasets, episodes
  if os.path.exists(args.out):
    raise UserError(f'--out {args.out} exists; choose another path (lists are never overwritten)')
  data = ml_collections.ConfigDict(dict(
      dataset=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir, fold=args.fold, shot=args.shot,
      fold_list=args.fold_list, class_list=args.class_list, min_pixels=args.min_pixels, image_size=args.image_size,
      protocol=args.protocol, test_split=args.split, builder_config='default', target_only=args.target,
      test_classes=args.test_classes, semantic=_semantic_options(args.semantic)))
  own = datasets.defaults(args.dataset, args.fold)
  data.test_split = data.test_split or own['test_split']
  data.protocol = data.protocol or own['protocol']
  if args.seed < 0:
    raise UserError(f'--seed must be >= 0, got {args.seed}')
  split = datasets.load_split(data, data.test_split, training=False)
  protocol = datasets.test_protocol(data, ml_collections.ConfigDict(dict(num_episodes=args.num_episodes,
                                                                          seed=args.seed)))
  lines = episodes.episode_lines(episodes.protocol_episodes(split, data, protocol, args.shot), split)
  tmp = f'{args.out}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(episodes.list_text(lines))
  os.replace(tmp, args.out)
  print(f'{len(lines)} episodes -> {args.out} (sha256 {episodes.list_sha256(lines)})')


def _semantic_options(items: list[str]) -> dict:
  from mmtjax.data.builders import semantic
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise UserError(f'--semantic takes KEY=VALUE (e.g. ignore_index=11), got {item!r}')
    kind = type(semantic.OPTIONS.get(key))
    out[key] = (int(value) if kind is int and value.lstrip('-').isdigit() else
                value.lower() in ('1', 'true', 'yes') if kind is bool else value)
  return semantic.options(out)


if __name__ == '__main__':
  main(sys.argv[1:])
