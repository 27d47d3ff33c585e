"""TrainState and the optimiser (with frozen parameters masked out)."""

from __future__ import annotations

from typing import Any

import flax
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmtjax.errors import UserError
from mmtjax.models import backbones
from mmtjax.weights import convert

MODEL_COLLECTIONS = ('batch_stats', 'memory')


@flax.struct.dataclass
class TrainState:
  """Everything training needs to continue exactly: checkpointed whole."""
  step: jax.Array  # [] int32
  params: Any
  opt_state: Any
  model_state: Any  # {'batch_stats': ..., 'memory': ...}
  rng: jax.Array  # [2] uint32 raw key


def warmup_steps(train_config: ml_collections.ConfigDict) -> int:
  """train.warmup_steps, clipped to a tenth of the run when the run is not longer than it (a
  smoke test of a few steps would otherwise train at a learning rate of almost 0)."""
  t = train_config
  return t.warmup_steps if t.num_steps > t.warmup_steps else t.num_steps // 10


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up, then poly decay lr * (1 - t/T)^power (PFENet/MM-Net use power 0.9)."""
  t = config.train
  warm = warmup_steps(t)
  decay = optax.polynomial_schedule(t.lr, 0.0, t.poly_power, max(1, t.num_steps - warm))
  if warm <= 0:
    return decay
  warmup = optax.linear_schedule(0.0, t.lr, warm)
  return optax.join_schedules([warmup, decay], [warm])


def backbone_frozen(model_config: ml_collections.ConfigDict) -> bool:
  """model.freeze_backbone, where unset (None): frozen for a ViT (DINOv2/DINOv3 are used frozen,
  as the foundation-model methods do), trained for a CNN."""
  frozen = model_config.get('freeze_backbone')
  return backbones.is_vit(model_config.get('backbone', '')) if frozen is None else bool(frozen)


def backbone_fixed(model_config: ml_collections.ConfigDict, *, training: bool) -> bool:
  """Whether the backbone's outputs for an image never change during a run: it is frozen and,
  in training, its BatchNorm (if any) reads running statistics (a ViT has none)."""
  if not backbone_frozen(model_config):
    return False
  return (not training or backbones.is_vit(model_config.get('backbone', ''))
          or model_config.get('backbone_bn', 'batch') == 'running')


def trainable_labels(params: Any, config: ml_collections.ConfigDict) -> Any:
  """'frozen' for backbone ('encoder') parameters when the backbone is frozen, else 'train'."""
  frozen = backbone_frozen(config.model)

  def label(path, _):
    top = getattr(path[0], 'key', None)
    return 'frozen' if frozen and top == 'encoder' else 'train'

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  t = config.train
  schedule = learning_rate_schedule(config)
  if t.optimizer == 'sgd':
    tx = optax.chain(optax.add_decayed_weights(t.weight_decay),
                     optax.sgd(schedule, momentum=t.momentum))
  elif t.optimizer == 'adamw':
    tx = optax.adamw(schedule, weight_decay=t.weight_decay)
  else:
    raise UserError(f"train.optimizer must be 'sgd' or 'adamw', got {t.optimizer!r}")
  if t.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), tx)
  # Frozen parameters get no update and no optimizer state.
  return optax.multi_transform({'train': tx, 'frozen': optax.set_to_zero()},
                               trainable_labels(params, config))


def init_variables(model, config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Initialises the model on a dummy 1-episode batch (host, no axis)."""
  s, k = config.data.image_size, config.data.shot
  return model.init({'params': rng}, jnp.zeros((1, k, s, s, 3)), jnp.zeros((1, k, s, s), jnp.uint8),
                    jnp.zeros((1, s, s, 3)), train=False)


def create_train_state(model, config: ml_collections.ConfigDict) -> tuple[TrainState, optax.GradientTransformation]:
  """A fresh TrainState for `model` and its optimiser."""
  rng = jax.random.PRNGKey(config.seed)
  init_rng, rng = jax.random.split(rng)
  variables = jax.jit(lambda r: init_variables(model, config, r))(init_rng)
  params = variables.get('params', {})  # (a method with no weights at all has no 'params')
  tx = make_optimizer(config, params)
  model_state = {c: variables.get(c, {}) for c in MODEL_COLLECTIONS}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     model_state=model_state, rng=rng)
  return state, tx


def with_pretrained(state: TrainState, config: ml_collections.ConfigDict, note=None) -> TrainState:
  """`state` whose backbone params and BatchNorm statistics come from model.pretrained (a .pth
  file or another run's workdir; `note`: the loader's line about tensors the model never runs)."""
  m = config.model
  variables = convert.load_backbone(
      m.pretrained, {'params': state.params, 'batch_stats': state.model_state.get('batch_stats', {})},
      backbones.get_backbone(m.backbone, stem=m.get('stem')), note=note)
  return state.replace(params=variables['params'],
                       model_state={**state.model_state, 'batch_stats': variables['batch_stats']})


def untrained_variables(model, config: ml_collections.ConfigDict, note=None) -> dict:
  """The evaluation variables of a training-free method: its pretrained backbone, nothing else
  (what a checkpoint gives a trained method)."""
  state, _ = create_train_state(model, config)
  if config.model.get('pretrained'):  # (a method with no backbone, e.g. a trivial baseline, has none)
    state = with_pretrained(state, config, note=note)
  return {'params': state.params, **state.model_state}
