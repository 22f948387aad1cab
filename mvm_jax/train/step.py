"""The jitted pre-training step: masks, forward, weighted objectives, update, EMA teacher."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp
import optax

from mvm_jax import pixels
from mvm_jax.models import ema
from mvm_jax.train.state import TrainState


def _micro_batches(tree, accum: int):
  """[B, ...] → [accum, B/accum, ...] with micro-batch j = samples j, j+accum, ...
  (strided, so each device's local shard splits without moving data)."""
  return jax.tree.map(lambda x: einops.rearrange(x, '(m a) ... -> a m ...', a=accum), tree)


def views_last(tree, views: int):
  """Flattened rows [B·V, ...] → [B, V, ...] (rows 2i, 2i+1 = the views of video i)."""
  return jax.tree.map(lambda x: einops.rearrange(x, '(b v) ... -> b v ...', v=views), tree)


def flatten_views(tree):
  """[B, V, ...] → [B·V, ...], views of a video adjacent."""
  return jax.tree.map(lambda x: einops.rearrange(x, 'b v ... -> (b v) ...'), tree)


PHASES = ('forward', 'gradients', 'step')


@dataclasses.dataclass(frozen=True)
class ModelInputs:
  """Where the model's input comes from in a batch.

  key: the batch entry ('video' pixels, or 'tokens' pre-extracted codes).
  sample_ndim: its rank for one view a video, batch axis included (5 for
    [B, T, H, W, C]; 4 for tokens [B, T, H, W]); one more means two views.
  preprocess: optional fn(state.frozen, x [B', ...]) -> model input (e.g.
    pixels → VQ codes with a frozen tokenizer), applied to the flattened
    views inside the step, outside the gradient.
  mean / std: the data's per-channel normalisation: uint8 pixels are normalised
    with them in the step, on the device (`pixels.normalize`; other dtypes pass as they are).
  """

  key: str = 'video'
  sample_ndim: int = 5
  preprocess: Callable | None = None
  mean: tuple[float, ...] = (0.485, 0.456, 0.406)
  std: tuple[float, ...] = (0.229, 0.224, 0.225)

  def normalize(self, x):
    """uint8 pixels -> normalised float32 (on the device); anything else unchanged."""
    return pixels.normalize(x, self.mean, self.std)


def make_train_step(
  model,
  mask_policy: Callable,
  objective_fn: Callable,
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  grad_accum_steps: int = 1,
  teacher_momentum: Callable | None = None,
  inputs: ModelInputs | None = None,
  phase: str = 'step',
):
  """Returns train_step(state, batch) -> (state, metrics); jit it with shardings.

  batch: {'video': [B, T, H, W, C] uint8 (normalised here) or float (normalised), ...}, or two views per video
  [B, 2, T, H, W, C] (frame/clip pairs; flattened to [2B, ...] with the
  views of a video adjacent, as the contrastive objectives expect).
  `inputs` (default: the video) says which batch entry the model reads and
  how the frozen part of the state turns it into model inputs (VIMPAC:
  tokens read from the batch, or pixels tokenized on the fly).

  Masks come from mask_policy(fold_in(fold_in(state.rng, step), 0), step,
  inputs, state.teacher): sample b's mask depends on the step and on b only,
  so it is the same on any mesh and with any gradient accumulation. Model
  collections in `state.model_state` (BatchNorm statistics) are updated by
  the forward pass. `teacher_momentum(step)`, if given, updates
  `state.teacher` to the EMA of the new params after the optimizer step.

  `phase` (benchmarks: `tools.bench`'s per-phase table) stops early and returns the state as it
  came: 'forward' (masks + forward + objectives), 'gradients' (+ backward); 'step' is all.
  """

  if phase not in PHASES:
    raise ValueError(f'phase must be one of {PHASES}, got {phase!r}')
  if phase != 'step' and grad_accum_steps != 1:
    raise ValueError(f'phase={phase!r} times one micro-batch: needs grad_accum_steps=1')
  inputs = inputs or ModelInputs()

  def loss_fn(params, model_state, video, mask, dropout_rng, step):
    variables = {'params': params, **model_state}
    rngs = {'dropout': dropout_rng}
    if model_state:
      outputs, model_state = model.apply(
        variables, video, mask, deterministic=False, rngs=rngs, mutable=list(model_state)
      )
    else:
      outputs = model.apply(variables, video, mask, deterministic=False, rngs=rngs)
    loss, metrics = objective_fn(outputs, {'inputs': video}, step)
    return loss, (metrics, model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    mask_rng, dropout_rng = jax.random.fold_in(step_rng, 0), jax.random.fold_in(step_rng, 1)
    video = batch[inputs.key]
    if video.ndim == inputs.sample_ndim:
      video = video[:, None]  # one view a video
    views = video.shape[1]
    flat_video = inputs.normalize(flatten_views(video))
    if inputs.preprocess is not None:
      flat_video = inputs.preprocess(state.frozen, flat_video)
    mask, mask_metrics = mask_policy(mask_rng, state.step, flat_video, state.teacher)

    if phase == 'forward':
      _, (metrics, _) = loss_fn(state.params, state.model_state, flat_video, mask, dropout_rng, state.step)
      return state, dict(metrics, **mask_metrics)
    if grad_accum_steps == 1:
      (_, (metrics, model_state)), grads = grad_fn(
        state.params, state.model_state, flat_video, mask, dropout_rng, state.step
      )
    else:
      # Micro-batches split whole videos (both views stay together).
      micro_video, micro_mask = _micro_batches(views_last((flat_video, mask), views), grad_accum_steps)

      def accumulate(carry, xs):
        grads_sum, metrics_sum, model_state = carry
        j, v, m = xs
        (_, (metrics, model_state)), g = grad_fn(
          state.params,
          model_state,
          flatten_views(v),
          flatten_views(m),
          jax.random.fold_in(dropout_rng, j),
          state.step,
        )
        return (
          jax.tree.map(jnp.add, grads_sum, g),
          jax.tree.map(jnp.add, metrics_sum, metrics),
          model_state,
        ), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      first = jax.tree.map(lambda x: x[0], (micro_video, micro_mask))
      shapes = jax.eval_shape(
        lambda: grad_fn(state.params, state.model_state, *flatten_views(first), dropout_rng, state.step)[0][
          1
        ][0]
      )
      zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
      xs = (jnp.arange(grad_accum_steps), micro_video, micro_mask)
      (grads, metrics, model_state), _ = jax.lax.scan(
        accumulate, (zeros, zero_metrics, state.model_state), xs
      )
      grads, metrics = jax.tree.map(lambda x: x / grad_accum_steps, (grads, metrics))
    if phase == 'gradients':
      return state, dict(metrics, **mask_metrics, grad_norm=optax.tree.norm(grads))

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, **mask_metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
    teacher = state.teacher
    if teacher_momentum is not None:
      momentum = teacher_momentum(state.step)
      teacher = ema.ema_update(teacher, params, momentum)
      metrics['hpm/teacher_momentum'] = momentum
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state, teacher=teacher
    )
    return new_state, metrics

  return train_step
