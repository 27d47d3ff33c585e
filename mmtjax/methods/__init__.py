"""Methods: each few-shot method is one object (base.Method) registered by its config name.

The trainer, the evaluator, the configs and the command lines ask the method
for everything method-specific (its module, loss, logged diagnostics,
evaluation modes, config sections, prediction) and never test a name:

  method = methods.for_config(config)
  model = method.build(config, axis_name=...)

A new method is a `Method` subclass passed to `register`; nothing else changes
(tests/test_methods.py registers one of its own).
"""

from __future__ import annotations

from mmtjax.errors import UserError
from mmtjax.methods.base import Method

_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds a method under method.name (replacing one of the same name)."""
  _REGISTRY[method.name] = method
  return method


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Method:
  if name not in _REGISTRY:
    raise UserError(f'unknown model {name!r}; choose from {names()}')
  return _REGISTRY[name]


def for_config(config) -> Method:
  """The method named by config.model.name."""
  return get(config.model.name)


def _register_builtin() -> None:
  from mmtjax.methods import baseline, mmnet, mmt, prototype
  for method in (mmt.MMTMethod(), baseline.BaselineMethod(), mmnet.MMNetMethod(), prototype.PrototypeMethod()):
    register(method)


_register_builtin()
