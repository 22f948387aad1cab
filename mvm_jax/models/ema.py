"""Exponential moving average of parameters (HPM's teacher): pure functions.

The teacher is a tree with the student's structure (params, and BatchNorm
statistics where a model has them); the train step calls `ema_update` after
each optimizer step with `momentum_schedule(step, ...)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def ema_update(teacher, student, momentum):
  """m·teacher + (1 - m)·student, leaf by leaf; keeps the teacher's dtypes.

  Args:
    teacher, student: trees of arrays with the same structure and shapes.
    momentum: scalar m in [0, 1] (may be traced).
  """
  m = jnp.asarray(momentum, jnp.float32)
  return jax.tree.map(lambda t, s: (m * t + (1.0 - m) * s).astype(t.dtype), teacher, student)


def momentum_schedule(step, steps_per_epoch: int, m0: float = 0.999, m1: float = 0.9999, epochs: float = 100):
  """Teacher momentum: linear m0 → m1 over the first `epochs` epochs, then m1.

  HPM's official schedule (per epoch there, per step here). `step` may be
  traced; returns a float32 scalar.
  """
  transition = max(round(epochs * steps_per_epoch), 1)
  schedule = optax.linear_schedule(init_value=m0, end_value=m1, transition_steps=transition)
  return jnp.asarray(schedule(step), jnp.float32)
