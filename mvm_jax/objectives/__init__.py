"""Objective registry: a method is a weighted sum of named objectives.

Each objective is built from the config by a factory and is a pure function
`(outputs: dict, batch: dict) -> (loss: scalar, metrics: dict)`. The config
lists objectives with weights, e.g. `config.objectives = {'pixel_mse': 1.0}`;
`make_objective_fn` sums them. New objectives (token cross-entropy, loss
prediction, InfoNCE, ...) register themselves here and need no change to the
training loop.
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


# Register the built-in objectives.
from mvm_jax.objectives import pixel_mse  # noqa: E402,F401
from mvm_jax.objectives import loss_prediction  # noqa: E402,F401
from mvm_jax.objectives import contrastive  # noqa: E402,F401
from mvm_jax.objectives import vq  # noqa: E402,F401
from mvm_jax.objectives import token_ce  # noqa: E402,F401
