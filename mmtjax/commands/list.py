r"""What there is: methods, backbones (and the weight files each reads), datasets (and the layouts
their builders find), and the config files' variants.

  python -m mmtjax.commands.list                 # everything
  python -m mmtjax.commands.list backbones       # one section: methods, backbones, datasets, configs

A config as a command would run it, without running anything:
`python train.py --config ... --print_config` (evaluate.py too).
"""

from __future__ import annotations

import argparse
import sys

SECTIONS = ('methods', 'backbones', 'datasets', 'configs')

# Weight files users have, per backbone family (model.pretrained; README "Foundation backbones").
_WEIGHTS = {
    'resnet50': "torchvision's resnet50-0676ba61.pth / resnet50-11ad3fa6.pth; PSPNet's deep-stem "
                "resnet50_v2.pth (PFENet's initmodel/, model.stem=deep)",
    'resnet101': "torchvision's resnet101-63fe2227.pth; PSPNet's resnet101_v2.pth (model.stem=deep)",
    'vgg16_bn': "torchvision's vgg16_bn-6c64b313.pth",
    'dinov2': "Meta's dinov2_<size>14[_reg4]_pretrain.pth (e.g. dinov2_vits14_pretrain.pth)",
    'dinov3': "Meta's dinov3_<size>16_pretrain_lvd1689m-<hash>.pth",
}

_CONFIGS = (
    ('configs/default.py', 'shot=1, fold=-1, model=mmt, dataset=mmtjax_shapes',
     'the CPU-sized demo on the embedded data; dataset=folder|semantic for your own'),
    ('configs/patnet.py', 'target=isic2018, model=mmt, shot=1, backbone=',
     "PATNet's cross-domain benchmark: train on PASCAL, test on the target"),
    ('configs/mmnet_pascal.py', 'shot=1, fold=0', "MM-Net as in its paper on PASCAL-5i (ResNet-50, 473 px)"),
)


def _weights(name: str) -> str:
  if 'golden' in name:
    return "tests/golden/vit/dinov2_tiny.pth (a CPU-sized file Meta's code wrote, for tests)"
  if name.endswith('_tiny') or name.endswith('_tiny_reg'):
    return 'none (a CPU-sized network with random weights, for tests and the demo)'
  family = name.split('_')[0] if name.startswith('dino') else name
  return _WEIGHTS.get(family, '-')


def lines(section: str) -> list[str]:
  if section == 'methods':
    from mmtjax import methods
    out = []
    for name in methods.names():
      m = methods.get(name)
      kind = 'trainable' if m.trainable else 'training-free'
      out.append(f'  {name:<12} {kind}; evaluation rows: {", ".join(m.eval_modes)}')
    return out
  if section == 'backbones':
    from mmtjax.models import backbones
    return [f'  {name:<20} {"ViT" if backbones.is_vit(name) else "CNN"}; weights: {_weights(name)}'
            for name in backbones.NAMES]
  if section == 'datasets':
    from mmtjax.data import datasets
    return [f'  {name:<20} {datasets.get(name).describe()}' for name in datasets.names()]
  return [f'  {path}:{args}  ({what})' for path, args, what in _CONFIGS]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('section', nargs='?', choices=SECTIONS, help='one section (default: all)')
  args = p.parse_args(argv)
  for section in [args.section] if args.section else SECTIONS:
    print(f'{section}:')
    print('\n'.join(lines(section)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
