"""The baseline: MMT's network without the style memory (L = L_pro)."""

from __future__ import annotations

from mmtjax.methods.mmt import MMTMethod


class BaselineMethod(MMTMethod):
  name = 'baseline'
  eval_modes = {'no_memory': {'transfer': False}}
  config_sections = ()
  use_memory = False
