"""The objective registry: named factories, and the weighted sum a config asks for.

Each objective is built from the config by a factory registered under its name
(:func:`register`) and is a pure function ``(outputs: dict, batch: dict) -> (loss:
scalar, metrics: dict)``; :func:`make_objective_fn` sums ``config.objectives``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax.numpy as jnp

ObjectiveFn = Callable[..., tuple[Any, dict]]
OBJECTIVES: dict[str, Callable[[Any], ObjectiveFn]] = {}


def register(name: str):
  """Decorator: register `factory(config) -> ObjectiveFn` under `name`."""

  def wrap(factory):
    if name in OBJECTIVES:
      raise ValueError(f'objective {name!r} registered twice')
    OBJECTIVES[name] = factory
    return factory

  return wrap


def make_objective_fn(config, start_steps: Optional[dict[str, int]] = None) -> ObjectiveFn:
  """Weighted sum of `config.objectives`; metrics hold each term and 'loss'.

  `objective_fn(outputs, batch, step=None)`: an objective named in
  `start_steps` weighs 0 before that step (a schedule such as ViC-MAE's
  contrastive term switched on after epoch E); its term is still computed
  and logged.
  """
  start_steps = dict(start_steps or {})
  terms = []
  for name, weight in config.objectives.items():
    if name not in OBJECTIVES:
      raise ValueError(f'config.objectives: unknown objective {name!r}; known: {sorted(OBJECTIVES)}')
    terms.append((name, float(weight), OBJECTIVES[name](config)))

  def objective_fn(outputs, batch, step=None):
    total, metrics = jnp.zeros((), jnp.float32), {}
    for name, weight, fn in terms:
      loss, extra = fn(outputs, batch)
      if step is not None and start_steps.get(name, 0) > 0:
        weight = jnp.where(step >= start_steps[name], weight, 0.0)
      total = total + weight * loss
      metrics[f'loss/{name}'] = loss
      metrics.update(extra)
    metrics['loss'] = total
    return total, metrics

  return objective_fn
