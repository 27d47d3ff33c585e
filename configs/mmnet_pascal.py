r"""MM-Net on PASCAL-5i as in the paper and the official code.

  python train.py --config configs/mmnet_pascal.py:fold=0,shot=1 --workdir /ckpt/mmnet_f0_1s
  python evaluate.py --config configs/mmnet_pascal.py:fold=0,shot=1 --workdir /ckpt/mmnet_f0_1s

ResNet-50 with the deep stem (frozen; ImageNet weights from
`--config.model.pretrained=/path/resnet50_v2.pth`, the PSPNet checkpoint
PFENet and MM-Net start from), 473 x 473 crops, batch 4, 200 epochs, SGD momentum 0.9,
weight decay 1e-4, lr 0.025 with poly decay (power 0.9) per step; loss
CE_main + 1.0 mean CE_aux + 0.1 L_recon. Test: the PFENet/MM-Net protocol
(5000 episodes, seed 321, longer side 473 plus padding, scored at the
original label resolution). The paper reports 61.8 mean 1-shot mIoU over the
four folds.
"""

import ml_collections

from configs import default
from mmtjax import config_lib, methods


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, shot=1, fold=0)
  config = default.get_config(f'model=mmnet,shot={arg.shot},fold={arg.fold}')
  for section, fields in methods.get('mmnet').config('paper').items():  # The paper's model and loss.
    config[section] = fields
  config.data = default.data_section(
      'pascal5i', arg.shot, arg.fold,  # manual_dir: VOC2012 + SegmentationClassAug (README: Datasets)
      image_size=473,
      train_split='train',
      test_split='val',
      val_split='val',
      min_pixels=2 * 32 * 32,     # PFENet: a class counts only with >= 2*32*32 pixels
      protocol='pfenet',          # 5000 episodes, seed 321, longer side 473 + padding
      augment='mmnet',            # scale 0.9-1.1, rotate +-10, blur, flip, crop 473
      num_workers=8,
  )
  config.train.update(dict(
      num_steps=0,
      epochs=200,
      batch_size=4,
      optimizer='sgd',
      lr=0.025,
      momentum=0.9,
      weight_decay=1e-4,
      poly_power=0.9,
      warmup_steps=0,
      log_every=50,
      checkpoint_every=2000,
      eval_every=0,               # the official code selects on the test folds; off here
  ))
  config.eval.update(dict(num_episodes=5000, batch_size=16, seed=321))
  return config
