r"""MMT on the embedded cross-domain dataset, sized for a 2-core CPU.

Trains on all 20 source classes of `mmtjax_shapes` and tests 1-shot on the
6 target-domain classes, with the memory transfer on and off.

  python train.py --config configs/default.py --workdir /tmp/mmt_default

Variants: `configs/default.py:shot=5`, `:model=baseline`, `:model=mmnet` (a
CPU-sized MM-Net on the same data and schedule), `:fold=0` (in-domain: train
on 15 source classes, test on the fold's 5 novel source classes), and any
field with `--config.train.num_steps=100`.

Measured on a 2-core CPU (README, Quickstart): 1 min 45 s with evaluation;
target 1-shot mIoU 23.53 with the memory transfer on, 19.71 off (300
episodes, seed 0). `:model=baseline` reaches 16.91.
"""

import ml_collections
from ml_collections import config_dict

from mmtjax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, shot=1, fold=-1, model='mmt')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.compute_dtype = 'float32'

  if arg.model == 'mmnet':
    return _mmnet(config, arg)
  config.model = dict(
      name=arg.model,            # 'mmt' or 'baseline' (same network, no memory)
      backbone='resnet_tiny',
      stem=config_dict.placeholder(str),  # ResNet stem override: 'torchvision' or 'deep'
      output_stride=8,
      backbone_bn='batch',       # 'batch' or 'running'
      freeze_backbone=False,     # the tiny backbone has no pretrained weights
      pretrained=config_dict.placeholder(str),  # torchvision-style .pth for the backbone
      memory_stage='layer1',
      feature_stages=('layer2', 'layer3'),
      embed_dim=64,
      dropout=0.1,
      cosine_scale=20.0,
  )
  # docs/assumptions.md gives the measurements behind these values.
  config.memory = dict(num_items=8, momentum=0.95, alpha=0.5, tau=0.1, eps=1e-5,
                       similarity='centered_cosine',  # or 'cosine' (plain, collapses: docs)
                       assignment='nearest',       # or 'batch' (the paper's text: every image updates every item)
                       reseed_threshold=0.01)      # usage share under which an item is re-seeded
  config.loss = dict(orth=0.1, cont=0.1)
  return _shared(config, arg)


def mmnet_model(**overrides) -> dict:
  """MM-Net's model section (the paper's values unless overridden)."""
  model = dict(
      name='mmnet',
      backbone='resnet50',
      stem='deep',               # PSPNet stem, as PFENet / MM-Net
      output_stride=8,
      backbone_bn='batch',       # the official frozen backbone's BatchNorm runs in train mode
      freeze_backbone=True,
      # PSPNet deep-stem ResNet-50 .pth (PFENet's initmodel/resnet50_v2.pth), read without PyTorch.
      pretrained=config_dict.placeholder(str),
      reduce_dim=256,
      num_meta_classes=50,
      meta_init_std=1.0,
      bins=(60, 30, 15, 8),      # at 60 x 60 features; scaled to other sizes
      bin_reference_size=60,
      mid_dropout=0.5,
      head_dropout=0.1,
      prior_stage='layer4',      # PFENet's prior from frozen layer4 features
  )
  model.update(overrides)
  return model


def _mmnet(config: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  # CPU-sized MM-Net on the embedded dataset: the tiny backbone (no pretrained
  # weights, so it trains), a narrower head, the same data and schedule as MMT.
  config.model = mmnet_model(backbone='resnet_tiny', stem=config_dict.placeholder(str),
                             freeze_backbone=False, reduce_dim=64, prior_stage='layer3')
  config.loss = dict(aux=1.0, recon=0.1)
  return _shared(config, arg)


def _shared(config: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  config.data = dict(
      dataset='mmtjax_shapes',
      builder_config='default',
      data_dir=config_dict.placeholder(str),  # tfds data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      manual_dir=config_dict.placeholder(str),  # raw files of the real datasets (README: Datasets)
      image_size=64,
      shot=arg.shot,
      fold=arg.fold,
      train_split='source_train',
      test_split='target_test' if arg.fold < 0 else 'source_test',
      # Validation for the best checkpoint: held-out source images (never the
      # target domain); with a fold, its novel classes.
      val_split='source_test',
      min_pixels=48,              # PFENet's rule is 2*32*32 at 473 px; scaled to 96 px images
      augment='flip',             # 'none', 'flip' or 'mmnet' (PFENet/MM-Net augmentation)
      protocol='custom',          # test episodes: 'custom' (eval.*), 'hsnet' or 'pfenet'
      num_workers=4,
  )
  config.train = dict(
      num_steps=2000,
      epochs=0,                   # > 0: num_steps = epochs x (training images // batch_size)
      batch_size=8,               # episodes per step, split over the devices
      optimizer='adamw',
      lr=2e-3,
      momentum=0.9,
      weight_decay=1e-4,
      poly_power=0.9,
      warmup_steps=50,
      grad_clip=0.0,
      log_every=100,
      checkpoint_every=500,
      max_to_keep=2,
      eval_every=1000,            # validation mIoU -> checkpoints_best/ (0: off)
  )
  # Test episodes use `seed`; validation episodes use seed + 1.
  config.eval = dict(num_episodes=300, batch_size=16, seed=0, val_episodes=100)
  return ml_collections.ConfigDict(config)
