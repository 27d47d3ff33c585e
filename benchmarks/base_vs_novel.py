r"""Foreground IoU of a trained checkpoint on a fold's base vs novel classes (a diagnostic).

  python benchmarks/base_vs_novel.py --config_arg model=mmnet,fold=0 --workdir /tmp/mmnet_f0

Uses configs/default.py with the given arg (the model section comes from the
checkpoint, so runs trained with --config.model overrides load as they
were), the held-out images of
`source_test`, and two support choices: the sampled support, and the query
itself as its own support (an upper bound for using the support). A model
that segments base classes but not novel ones has learnt its training
classes rather than to compare with the support. Not a test.
"""

import argparse
import sys

import jax
import ml_collections
import numpy as np

sys.path.insert(0, '.')
from configs import default  # noqa: E402
from mmtjax import checkpointing, metrics  # noqa: E402
from mmtjax.data import datasets, pipeline  # noqa: E402
from mmtjax.data.episodes import EpisodeSampler  # noqa: E402
from mmtjax.models import get_model  # noqa: E402
from mmtjax.state import create_train_state  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--config_arg', default='fold=0')
  p.add_argument('--workdir', required=True)
  p.add_argument('--episodes', type=int, default=64)
  args = p.parse_args()
  config = default.get_config(args.config_arg)
  if config.data.fold < 0:
    raise SystemExit('error: needs a fold (e.g. --config_arg fold=0) to tell base from novel classes')
  ckpts = checkpointing.Checkpoints(args.workdir, create=False)
  if ckpts.latest_step() is None:
    raise SystemExit(f'error: no checkpoint in {args.workdir}')
  # The network as the run saved it (any --config.model overrides it was trained with).
  config.model = ml_collections.ConfigDict(ckpts.saved_config(ckpts.latest_step())['model'])
  model = get_model(config)
  template, _ = create_train_state(model, config)
  step, state = ckpts.restore_latest(jax.device_get(template), config)
  if step is None:
    raise SystemExit(f'error: no checkpoint in {args.workdir}')
  variables = {'params': state.params, **state.model_state}
  print(f'{config.model.name} step {step} | {args.workdir} | python benchmarks/base_vs_novel.py '
        f'{" ".join(sys.argv[1:])}')
  for training, kind in ((True, 'base'), (False, 'novel')):
    split = datasets.load_split(config.data, 'source_test', training=training)
    sampler = EpisodeSampler(split.index, split.classes, 1, seed=0)
    loader = pipeline.EpisodeLoader(split.source, image_size=config.data.image_size, augment='none',
                                    seed=0, num_workers=config.data.num_workers)
    n = args.episodes
    b = jax.tree.map(lambda x: x[0], loader.batch(sampler.test_list(n), [(0, i) for i in range(n)], (1, n)))
    for own, label in ((False, 'sampled support'), (True, 'query as support')):
      si, sl = ((b['query_images'][:, None], b['query_labels'][:, None]) if own
                else (b['support_images'], b['support_labels']))
      out = model.apply(variables, si, sl, b['query_images'], train=False)
      c = np.asarray(metrics.episode_counts(out['logits'], b['query_labels']))
      print(f'  {kind:5s} classes, {label:16s}: foreground IoU {100 * c[:, 0].sum() / c[:, 1].sum():5.1f}')


if __name__ == '__main__':
  main()
