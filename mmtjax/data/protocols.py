"""Published test protocols: how many episodes, which seed, which resize, which scoring.

Each dataset declares its own (its builder's PROTOCOLS, built with `hsnet`,
`uniform` and `pfenet` below, or a protocol of its own);
datasets.test_protocol asks the config's test dataset. The published ones:

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
PROTOCOLS = ('hsnet', 'uniform', 'pfenet', 'custom')


# What a dataset declares (its builder's PROTOCOLS): the published protocols with its counts.

def hsnet(num_episodes: int | None, *, anchors: bool = False, order: str = 'random') -> Protocol:
  """(a): 400 x 400, seed 0; `anchors`: the anchors' own episodes replayed (builder.anchor_episodes),
  else mmtjax's sampler in `order`."""
  return Protocol('hsnet', num_episodes, 0, 400, 'square', order='anchors' if anchors else order)


def uniform(num_episodes: int | None, *, order: str = 'random') -> Protocol:
  """(a)'s count, size and seed with mmtjax's sampler."""
  return Protocol('uniform', num_episodes, 0, 400, 'square', order=order)


def pfenet(num_episodes: int) -> Protocol:
  """(b): longer side 473, padded, seed 321, scored at the original label resolution."""
  return Protocol('pfenet', num_episodes, 321, 473, 'longer_side_pad', original_resolution=True)
