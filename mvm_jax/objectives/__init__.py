"""Objective registry: a method is a weighted sum of named objectives.

Each objective is built from the config by a factory and is a pure function
`(outputs: dict, batch: dict) -> (loss: scalar, metrics: dict)`. The config
lists objectives with weights, e.g. `config.objectives = {'pixel_mse': 1.0}`;
`make_objective_fn` sums them. New objectives (token cross-entropy, loss
prediction, InfoNCE, ...) register themselves here and need no change to the
training loop.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

ObjectiveFn = Callable[[dict, dict], tuple[Any, dict]]
OBJECTIVES: dict[str, Callable[[Any], ObjectiveFn]] = {}


def register(name: str):
  """Decorator: register `factory(config) -> ObjectiveFn` under `name`."""

  def wrap(factory):
    if name in OBJECTIVES:
      raise ValueError(f'objective {name!r} registered twice')
    OBJECTIVES[name] = factory
    return factory

  return wrap


def make_objective_fn(config) -> ObjectiveFn:
  """Weighted sum of `config.objectives`; metrics hold each term and 'loss'."""
  terms = []
  for name, weight in config.objectives.items():
    if name not in OBJECTIVES:
      raise ValueError(f'config.objectives: unknown objective {name!r}; known: {sorted(OBJECTIVES)}')
    terms.append((name, float(weight), OBJECTIVES[name](config)))

  def objective_fn(outputs, batch):
    total, metrics = jnp.zeros((), jnp.float32), {}
    for name, weight, fn in terms:
      loss, extra = fn(outputs, batch)
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
