"""The jitted pre-training step: sample masks, forward, weighted objectives, update."""

from __future__ import annotations

from typing import Callable

import einops
import jax
import jax.numpy as jnp
import optax

from mvm_jax.train.state import TrainState


def _micro_batches(tree, accum: int):
  """[B, ...] → [accum, B/accum, ...] with micro-batch j = samples j, j+accum, ...
  (strided, so each device's local shard splits without moving data)."""
  return jax.tree.map(lambda x: einops.rearrange(x, '(m a) ... -> a m ...', a=accum), tree)


def make_train_step(
  model,
  masker: Callable,
  objective_fn: Callable,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  grad_accum_steps: int = 1,
):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings.

  batch: {'video': [B, T, H, W, C] float, ...}. Masks come from
  masker(fold_in(fold_in(state.rng, step), 0), B): sample b's mask depends on
  the step and on b only, so it is the same on any mesh and with any
  gradient accumulation.
  """

  def loss_fn(params, batch, mask, dropout_rng):
    outputs = model.apply(
      {'params': params}, batch['video'], mask, deterministic=False, rngs={'dropout': dropout_rng}
    )
    return objective_fn(outputs, batch)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    mask_rng, dropout_rng = jax.random.fold_in(step_rng, 0), jax.random.fold_in(step_rng, 1)
    mask = masker(mask_rng, batch['video'].shape[0])

    if grad_accum_steps == 1:
      (_, metrics), grads = grad_fn(state.params, batch, mask, dropout_rng)
    else:

      def accumulate(carry, xs):
        j, micro_batch, micro_mask = xs
        (_, m), g = grad_fn(state.params, micro_batch, micro_mask, jax.random.fold_in(dropout_rng, j))
        return jax.tree.map(jnp.add, carry, (g, m)), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      shapes = jax.eval_shape(lambda: grad_fn(state.params, batch, mask, dropout_rng)[0][1])
      zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      xs = (jnp.arange(grad_accum_steps), *_micro_batches((batch, mask), grad_accum_steps))
      (grads, metrics), _ = jax.lax.scan(accumulate, (zeros, zero_metrics), xs)
      grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, (grads, metrics))

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step
