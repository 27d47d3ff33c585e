r"""MMT on the embedded cross-domain dataset, sized for a 2-core CPU.

Trains on all 20 source classes of `mmtjax_shapes` and tests 1-shot on the
6 target-domain classes, with the memory transfer on and off.

  python train.py --config configs/default.py --workdir /tmp/mmt_default

Variants: `configs/default.py:shot=5`, `:model=baseline`, `:model=mmnet` (a
CPU-sized MM-Net on the same data and schedule), `:fold=0` (in-domain: train
on 15 source classes, test on the fold's 5 novel source classes), and any
field with `--config.train.num_steps=100`. `:dataset=NAME` trains and tests
on another dataset with its own splits and test protocol (pascal5i, coco20i,
fss1000, `folder`, your own images and binary masks, or `semantic`, your own
label-index dataset: README, "Use your own data"), e.g.
`configs/default.py:dataset=folder --config.data.manual_dir=~/my_data`. The
cross-domain benchmark (train on PASCAL, test on Deepglobe, ISIC, Chest
X-ray or FSS-1000) is configs/patnet.py.

Measured on a 2-core CPU (README, Quickstart): target 1-shot mIoU 31.63 with
the memory transfer on, 25.19 off (300 episodes, training seed 0);
`:model=baseline` reaches 21.78. Over seeds 0-2: README, "MMT's style memory".
"""

import ml_collections
from ml_collections import config_dict

from mmtjax import adapt, config_lib, methods
from mmtjax.data import episodes, protocols
from mmtjax.data.builders import semantic


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, shot=1, fold=-1, model='mmt', dataset='mmtjax_shapes')
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.compute_dtype = 'float32'

  # The method's own sections (model, loss, and e.g. MMT's memory), sized for
  # a CPU; docs/assumptions.md gives the measurements behind their values.
  method = methods.get(arg.model)
  for section, fields in method.config('cpu').items():
    config[section] = fields
  config = _shared(config, arg)
  config.data.update(method.data_config('cpu'))  # e.g. MM-Net's own augmentation
  return config


def data_section(dataset: str, shot: int, fold: int, **fields) -> ml_collections.ConfigDict:
  """config.data for `dataset`; split and protocol fields left None take the dataset's own
  (mmtjax.data.datasets.defaults), the test ones from test_dataset when one is set."""
  data = dict(
      dataset=dataset,
      data_dir=config_dict.placeholder(str),  # tfds data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
      manual_dir=config_dict.placeholder(str),  # raw files of a real dataset (README: Datasets)
      # Cross-domain: test on another dataset than the one trained on, read from its own raw files.
      test_dataset=config_dict.placeholder(str),
      test_manual_dir=config_dict.placeholder(str),
      class_list=config_dict.placeholder(str),  # ISIC: PATNet's class_id.csv, when not in manual_dir
      # dataset=semantic (a label-index dataset): its layout, class list and ignore label
      # (mmtjax/data/builders/semantic.py); test_semantic: the test dataset's, where they differ.
      semantic=_semantic_section(semantic.OPTIONS),
      test_semantic=_semantic_section({k: None for k in semantic.OPTIONS}),
      # Classes held out for testing when a dataset with its own folds is tested on itself
      # (names or ids, e.g. 'Car,Pedestrian'); None: data.fold's classes.
      test_classes=config_dict.placeholder(str),
      # Protocol 'hsnet' on PASCAL-5i / COCO-20i: HSNet's data/splits/<pascal|coco>/val/fold<f>.<txt|pkl>,
      # when not in manual_dir (mmtjax.data.episodes).
      fold_list=config_dict.placeholder(str),
      image_size=64,
      shot=shot,
      fold=fold,
      train_split=config_dict.placeholder(str),
      # Validation for the best checkpoint: held-out source images (never the
      # target domain); with a fold, its novel classes.
      val_split=config_dict.placeholder(str),
      test_split=config_dict.placeholder(str),
      min_pixels=episodes.MIN_PIXELS,  # 48; PFENet's rule is 2*32*32 at 473 px; scaled to 96 px images
      augment='flip',             # 'none', 'flip' or 'mmnet' (PFENet/MM-Net augmentation)
      protocol=config_dict.placeholder(str),  # test episodes: 'custom' (eval.*), 'hsnet' or 'pfenet'
      num_workers=4,
  )
  if dataset == 'mmtjax_shapes':
    data.update(builder_config='default', train_split='source_train', val_split='source_test',
                test_split='target_test' if fold < 0 else 'source_test', protocol='custom')
  data.update(fields)
  return ml_collections.ConfigDict(data)


def _semantic_section(values: dict) -> ml_collections.ConfigDict:
  """data.semantic's fields, None ones typed so that the command line can set them."""
  kinds = {'ignore_index': int, 'reduce_zero_label': bool}
  return ml_collections.ConfigDict({k: config_dict.placeholder(kinds.get(k, str)) if v is None else v
                                    for k, v in values.items()})


def _shared(config: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
  config.data = data_section(arg.dataset, arg.shot, arg.fold)
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
      log_panels=3,               # prediction panels per validation and test, in TensorBoard (0: none)
      smoke_steps=20,             # num_steps <= this is a smoke run: validation and the final test use
      smoke_episodes=16,          # at most smoke_episodes episodes each (smoke_steps=0: always the full count)
  )
  # Test episodes use `seed`; validation episodes use seed + 1.
  # kshot: 'model' (the method's own k-shot path) or 'vote' (HSNet's vote of k 1-shot predictions).
  config.eval = dict(num_episodes=protocols.CUSTOM_EPISODES, batch_size=16, seed=protocols.CUSTOM_SEED,
                     val_episodes=100, kshot='model')
  # Test-time adaptation per episode on its own supports (mmtjax/adapt.py, whose Adaptation
  # documents the fields: steps, groups, optimizer, lr, loss, use_query, query_weight, flip,
  # scale, jitter, seed). steps 0: off; > 0: every eval mode gets an adapted twin row
  # '<mode>+adapt'. E.g. --config.eval.adapt.steps=20 --config.eval.adapt.lr=1e-3.
  config.eval.adapt = adapt.config_section()
  return ml_collections.ConfigDict(config)
