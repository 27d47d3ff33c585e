"""What a method is: build, train, evaluate and predict, in one object.

After scenic's BaseModel (build_flax_model / loss_function / get_metrics_fn)
and axlearn's forward -> (loss, aux) plus predict: one definition serves
training, evaluation and inference, and the trainer never asks which method
it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections


class Method:
  """Base class; subclasses set `name` and implement `build` and `loss`.

  Attributes:
    name: the config's model.name.
    eval_modes: report row -> keyword arguments of the module's test-time
      call (MMT: the memory transfer on and off; most methods: one row).
    config_sections: config sections (besides 'model') that define the
      network; a checkpoint restores only under a config agreeing on them.
    adapt_groups: test-time adaptation's parameter groups, group name -> the
      top-level modules of the params tree it adapts (adapt.py); never the
      backbone.
    adapt_default: the groups adapted when config.eval.adapt.groups is unset.
    trainable: False for a training-free method: evaluation and prediction build it from the
      config and model.pretrained with no checkpoint, and train.py refuses it in one line.
  """

  name: str = ''
  eval_modes: Mapping[str, Mapping[str, Any]] = {}
  config_sections: tuple[str, ...] = ()
  adapt_groups: Mapping[str, tuple[str, ...]] = {}
  adapt_default: tuple[str, ...] = ()
  trainable: bool = True

  # --- configuration -------------------------------------------------------------------------
  def config(self, variant: str = 'paper') -> dict:
    """The method's config sections {'model': ..., 'loss': ..., ...}; variant 'cpu' sizes it
    for the embedded data on a CPU."""
    raise NotImplementedError

  def data_config(self, variant: str = 'paper') -> dict:
    """Fields of config.data the method's variant sets over the dataset's (e.g. its own
    augmentation); most methods set none."""
    del variant
    return {}

  def validate(self, config: ml_collections.ConfigDict) -> list[tuple[bool, str]]:
    """(ok, message) checks of the method's own fields (config_lib runs them)."""
    del config
    return []

  # --- the network ---------------------------------------------------------------------------
  def build(self, config: ml_collections.ConfigDict, axis_name: str | None = None) -> nn.Module:
    raise NotImplementedError

  def apply(self, model: nn.Module, variables: Any, batch: Mapping[str, jax.Array], *, train: bool,
            mode: Mapping[str, Any] | None = None, **apply_kwargs) -> Any:
    """model.apply on an episode batch (support_images, support_labels, query_images, and the
    frozen backbone's 'features' where feature_cache.py attached them)."""
    if 'features' in batch:
      apply_kwargs = {**apply_kwargs, 'features': batch['features']}
    return model.apply(variables, batch['support_images'], batch['support_labels'],
                       batch['query_images'], train=train, **dict(mode or {}), **apply_kwargs)

  def feature_stop(self, config: ml_collections.ConfigDict, *, training: bool) -> str | None:
    """The stage up to which the backbone's outputs may be computed once per image and reused
    (feature_cache.py): only where the backbone is frozen, and in training only where it has no
    batch statistics; None: never (the default; a method opts in with its model's
    `backbone_features`)."""
    del config, training
    return None

  # --- training ------------------------------------------------------------------------------
  def loss(self, outputs: Mapping[str, Any], query_labels: jax.Array, weights: Mapping[str, float],
           axis_name: str | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total loss, named terms) of a training forward pass; the terms are logged as loss_<name>."""
    raise NotImplementedError

  def logged(self, outputs: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Scalars logged beside the loss (e.g. memory diagnostics); averaged over devices."""
    return dict(outputs.get('log', {}))

  # --- evaluation and inference --------------------------------------------------------------
  def foreground_logit(self, outputs: Mapping[str, Any]) -> jax.Array:
    """[B, h, w] foreground minus background logit at the model's output size."""
    logits = outputs['logits']
    return (logits[..., 1] - logits[..., 0]).astype(jnp.float32)

  def histograms(self, outputs: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Per-episode counts [B, n] summed by the evaluation report (e.g. memory items chosen)."""
    return dict(outputs.get('histograms', {}))
