r"""PATNet's cross-domain benchmark: train on PASCAL VOC + SBD (all 20 classes), test on a target.

  python train.py --config configs/patnet.py:target=isic2018,model=mmt --workdir /ckpt/patnet_mmt \
      --config.data.manual_dir=~/data/VOCdevkit --config.data.test_manual_dir=~/data/ISIC \
      --config.model.pretrained=~/weights/resnet50-0676ba61.pth
  python evaluate.py --config configs/patnet.py:target=isic2018,model=mmt,shot=5 --workdir /ckpt/patnet_mmt \
      --config.data.manual_dir=~/data/VOCdevkit --config.data.test_manual_dir=~/data/ISIC

Arguments: target = deepglobe | isic2018 | chest_xray | fss1000 (the test
dataset; its raw files go in data.test_manual_dir), model = mmt | mmnet |
baseline, shot = 1 | 5, backbone = a DINOv2 / DINOv3 ViT (below; default: the
ResNet-50 of each model). One trained model serves every target and shot:
the training fields do not depend on them.

On a foundation ViT (frozen, Meta's own .pth as released):

  python train.py --config configs/patnet.py:target=isic2018,model=mmt,backbone=dinov2_vitb14_reg \
      --workdir /ckpt/patnet_mmt_dinov2b --config.data.manual_dir=~/data/VOCdevkit \
      --config.data.test_manual_dir=~/data/ISIC \
      --config.model.pretrained=~/weights/dinov2_vitb14_reg4_pretrain.pth

The 400 x 400 inputs are resized bilinearly to the nearest multiple of the
patch (406 x 406, a 29 x 29 token grid, for /14; 400 for /16), predictions
are scored at the label size as for the ResNets. The stages are the quarter
points of the blocks (ViT-B: layer1 = blocks 0-2, ..., layer4 = blocks 9-11);
MMT's memory re-styles the layer1 patch tokens, its neck reads layer2 and
layer3 after the final LayerNorm; MM-Net reads the same mid-level stages and
its prior from layer4. Published ViT results on this benchmark (mean mIoU of
the four targets, 1-shot / 5-shot, other methods): HERA (CVPR 2026, frozen
DINOv3 ViT-L/16) 68.3 / 77.9; LoEC (2025) 65.0 / 70.4; SDRC (2025) 63.2 /
67.3. No MMT or MM-Net number on a ViT is published.

Setting (PATNet, ECCV 2022, https://github.com/slei109/PATNet: README, train.py,
test.py, data/*.py): source PASCAL VOC 2012 + SBD, fold 4 = all 20 classes
(data.fold -1 here); 400 x 400 inputs; Adam, lr 1e-3, batch 20; test with the
'hsnet' protocol on the target: seed 0, 400 x 400, 600 episodes whose class
cycles over the target's classes (Deepglobe, ISIC, Chest X-ray), every
FSS-1000 test image as the query once (2400 episodes). PATNet trains until
its PASCAL validation mIoU stops improving; the 20000 steps here, with the
best checkpoint chosen on PASCAL val every 2000 steps, are mmtjax's choice
(docs/assumptions.md), not a published value.

Models: MM-Net with the paper's model (frozen ResNet-50, deep stem: pass the
PSPNet-initialised .pth as for configs/mmnet_pascal.py); MMT with a frozen
torchvision ResNet-50 (ImageNet .pth), as PATNet's backbone, and the style
memory after layer1 (FACTS: the MMT paper publishes neither).

Expected results: neither the MMT nor the MM-Net paper reports this
benchmark, so there is no published number for these models. For
comparison, PATNet (ResNet-50) reports 1-shot mIoU 37.89 (Deepglobe), 41.16
(ISIC), 66.61 (Chest X-ray), 78.59 (FSS-1000).
"""

import ml_collections

from configs import default
from mmtjax import config_lib, methods
from mmtjax.models import backbones

TARGETS = ('deepglobe', 'isic2018', 'chest_xray', 'fss1000')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, target='isic2018', model='mmt', shot=1, backbone='')
  if arg.target not in TARGETS:
    raise config_lib.UserError(f'configs/patnet.py: target must be one of {TARGETS}, got {arg.target!r}')
  if arg.backbone and not backbones.is_vit(arg.backbone):
    raise config_lib.UserError(f'configs/patnet.py: backbone must be a DINOv2 / DINOv3 ViT '
                               f'({", ".join(sorted(n for n in backbones.NAMES if backbones.is_vit(n)))}), '
                               f'got {arg.backbone!r}')
  config = default.get_config(f'model={arg.model},shot={arg.shot}')
  for section, fields in methods.get(arg.model).config('paper').items():
    config[section] = fields
  if arg.model != 'mmnet':  # MMT and the baseline: PATNet's frozen ImageNet ResNet-50.
    config.model.update(dict(backbone='resnet50', stem='torchvision', freeze_backbone=True,
                             backbone_bn='running', embed_dim=256))
  if arg.backbone:  # frozen (model.freeze_backbone None: frozen for a ViT); no stem, no BatchNorm
    config.model.update(dict(backbone=arg.backbone, stem=None, freeze_backbone=None))
  config.data = default.data_section(
      'pascal5i', arg.shot, -1,   # manual_dir: VOC2012 + SegmentationClassAug (README: Datasets)
      test_dataset=arg.target,    # test_manual_dir: the target's raw files
      image_size=400,
      train_split='train',
      val_split='val',
      test_split=None,            # the target's own split and protocol ('hsnet')
      protocol=None,
      min_pixels=2 * 32 * 32,
      augment='flip',
      num_workers=8,
  )
  config.train.update(dict(
      num_steps=20000, epochs=0, batch_size=20, optimizer='adamw', lr=1e-3, weight_decay=0.0,
      poly_power=0.0, warmup_steps=0, log_every=100, checkpoint_every=1000, eval_every=2000))
  config.eval.update(dict(batch_size=30, seed=0, val_episodes=1000))
  return config
