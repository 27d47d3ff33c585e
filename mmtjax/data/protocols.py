"""Published test protocols: how many episodes, which seed, which resize, which scoring.

(a) HSNet / PATNet ('hsnet'): images and masks resized to 400 x 400, seed 0,
    1000 episodes (PASCAL-5i, COCO-20i), 600 (Deepglobe, ISIC2018, Chest
    X-ray), every FSS-1000 test image as the query once (2400): the anchors'
    own episodes, replayed name for name (mmtjax.data.anchors). SUIM, which
    they do not test, has the episode class cycling over its 7 classes
    (mmtjax's sampler).
    'uniform': the same counts, size and seed with mmtjax's own sampler
    (classes uniform, supports distinct from each other): for datasets or
    folds without the anchors' lists, and when distinct supports matter more
    than a number beside a published one.
(b) PFENet / MM-Net ('pfenet'): longer side resized to 473 and padded, seed
    321, 5000 episodes (PASCAL-5i) or 20000 (COCO-20i), scored at the
    original label resolution.
'custom' takes eval.num_episodes, eval.seed and data.image_size from the
config (the embedded dataset's default).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from mmtjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str
  num_episodes: int | None  # None: one episode per test image ('each_query')
  seed: int
  image_size: int
  resize: str  # 'square' or 'longer_side_pad' (see pipeline.EpisodeLoader)
  order: str = 'random'  # 'anchors' (anchors.py), or 'random', 'each_query', 'round_robin' (EpisodeSampler)
  original_resolution: bool = False


# 'custom' defaults (configs/default.py's eval.num_episodes and eval.seed; the episodes command's too).
CUSTOM_EPISODES = 300
CUSTOM_SEED = 0
_HSNET_EPISODES = {'pascal5i': 1000, 'coco20i': 1000, 'deepglobe': 600, 'isic2018': 600,
                   'chest_xray': 600, 'suim': 1000}
_PFENET_EPISODES = {'pascal5i': 5000, 'coco20i': 20000}
PROTOCOLS = ('hsnet', 'uniform', 'pfenet', 'custom')
_ANCHORS = ('pascal5i', 'coco20i', 'fss1000', 'deepglobe', 'isic2018', 'chest_xray')


def test_protocol(data: ml_collections.ConfigDict, eval_cfg: ml_collections.ConfigDict) -> Protocol:
  """The protocol of config.data.protocol for config.data.dataset."""
  name, dataset = data.get('protocol') or 'custom', data.dataset
  if name == 'custom':
    return Protocol('custom', eval_cfg.num_episodes, eval_cfg.seed, data.image_size, 'square')
  if name in ('hsnet', 'uniform'):
    if dataset not in (*_HSNET_EPISODES, 'fss1000'):
      raise UserError(f'protocol {name!r} is not defined for dataset {dataset!r}')
    if name == 'hsnet' and dataset in _ANCHORS:
      return Protocol(name, _HSNET_EPISODES.get(dataset), 0, 400, 'square', order='anchors')
    if dataset == 'fss1000':
      return Protocol(name, None, 0, 400, 'square', order='each_query')
    order = 'round_robin' if dataset == 'suim' else 'random'
    return Protocol(name, _HSNET_EPISODES[dataset], 0, 400, 'square', order=order)
  if name == 'pfenet':
    if dataset not in _PFENET_EPISODES:
      raise UserError(f"protocol 'pfenet' is defined for {sorted(_PFENET_EPISODES)}, not {dataset!r}")
    return Protocol(name, _PFENET_EPISODES[dataset], 321, 473, 'longer_side_pad',
                    original_resolution=True)
  raise UserError(f'data.protocol must be one of {PROTOCOLS}, got {name!r}')
