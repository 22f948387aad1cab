"""Optimizer and learning-rate schedule from `config.optim` (optax)."""

from __future__ import annotations

import jax
import optax

# Parameter names that count as positional embeddings or special tokens.
NO_DECAY_TOKENS = ('pos_embed', 'cls_token', 'mask_token')


def peak_learning_rate(config) -> float:
  """lr = base_lr × global batch / 256 (the MAE linear scaling rule)."""
  return config.optim.base_lr * config.batch_size / 256


def make_schedule(config, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine decay to `optim.min_lr`."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak_learning_rate(config),
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=config.optim.min_lr,
  )


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def weight_decay_mask(params, decay_pos_embed: bool = True):
  """True where weight decay applies: every parameter with ndim > 1 (mae_st), and
  optionally not positional embeddings, [CLS] or [MASK] tokens."""

  def decays(path, leaf):
    if leaf.ndim <= 1:
      return False
    return decay_pos_embed or not any(t in _path_name(path) for t in NO_DECAY_TOKENS)

  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config, schedule: optax.Schedule) -> optax.GradientTransformation:
  o = config.optim
  parts = []
  if o.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(o.clip_grad_norm))
  parts.append(
    optax.adamw(
      schedule,
      b1=o.b1,
      b2=o.b2,
      eps=o.eps,
      weight_decay=o.weight_decay,
      mask=lambda params: weight_decay_mask(params, o.decay_pos_embed),
    )
  )
  return optax.chain(*parts)
