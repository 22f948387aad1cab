"""Optimizer and learning-rate schedule from `config.optim` (optax)."""

from __future__ import annotations

import jax
import optax

# Parameter names that count as positional embeddings or special tokens.
NO_DECAY_TOKENS = ('pos_embed', 'cls_token', 'mask_token')


def lr_batch(config) -> float:
  """The batch of the lr rule: clips per step, or videos per step with
  `optim.lr_batch_unit='videos'` (each video gives data.repeated_sampling clips)."""
  if config.optim.get('lr_batch_unit', 'clips') == 'videos':
    return config.batch_size / max(1, config.data.get('repeated_sampling', 1))
  return config.batch_size


def peak_learning_rate(config) -> float:
  """lr = base_lr × batch / 256 (the MAE linear scaling rule; `lr_batch`)."""
  return config.optim.base_lr * lr_batch(config) / 256


def make_schedule(config, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak over `warmup_steps`, then decay to `optim.min_lr` at
  `total_steps`: cosine (`optim.schedule='cosine'`, MAE) or linear ('linear', VIMPAC).
  Both hold `min_lr` after `total_steps`."""
  kind = config.optim.get('schedule', 'cosine')
  peak, end = peak_learning_rate(config), config.optim.min_lr
  if kind == 'cosine':
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=warmup_steps,
      decay_steps=max(total_steps, warmup_steps + 1),
      end_value=end,
    )
  if kind == 'linear':
    warmup_steps = max(int(warmup_steps), 0)
    decay_steps = max(int(total_steps) - warmup_steps, 1)
    return optax.join_schedules(
      [
        optax.linear_schedule(init_value=0.0, end_value=peak, transition_steps=warmup_steps),
        optax.linear_schedule(init_value=peak, end_value=end, transition_steps=decay_steps),
      ],
      boundaries=[warmup_steps],
    )
  raise ValueError(f'config.optim.schedule: {kind!r} is not "cosine" or "linear"')


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def weight_decay_mask(params, decay_pos_embed: bool = True):
  """True where weight decay applies: every parameter with ndim > 1 (mae_st), and
  optionally not positional embeddings, [CLS] or [MASK] tokens. Parameters of scanned blocks
  (model.scan_blocks: under 'blocks', stacked over a leading layer axis) count without that axis."""

  def decays(path, leaf):
    stacked = 'blocks' in _path_name(path).split('/')
    if leaf.ndim - int(stacked) <= 1:
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


# The backbone's root in a classifier's params (ViT 'encoder', VIMPAC 'backbone')
# and the names of its embedding-level parameters (layer 0).
BACKBONE_ROOTS = ('encoder', 'backbone')
EMBEDDING_NAMES = (
  'patch_embed',
  'pos',
  'cls_token',
  'mask_token',
  'embedding',
  'pos_embed_cls',
  'pos_embed_t',
  'pos_embed_h',
  'pos_embed_w',
  'ln_pre',
)


def encoder_layer_id(path_name: str, depth: int) -> int:
  """Layer index for layer-wise lr decay: embeddings 0, block i → i + 1, the rest
  (final norm, head) depth + 1. `path_name` is 'a/b/c' of the parameter."""
  parts = path_name.split('/')
  roots = [i for i, part in enumerate(parts) if part in BACKBONE_ROOTS]
  if not roots:
    return depth + 1
  below = parts[roots[0] + 1 :]
  if below and below[0].startswith('block'):
    return int(below[0][len('block') :]) + 1
  if below and below[0] in EMBEDDING_NAMES:
    return 0
  return depth + 1


def layer_decay_scales(params, depth: int, decay: float):
  """lr multiplier per parameter: decay ** (depth + 1 - layer_id) (BEiT/MAE fine-tuning)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: decay ** (depth + 1 - encoder_layer_id(_path_name(path), depth)), params
  )


def make_finetune_optimizer(
  config, schedule: optax.Schedule, params, depth: int
) -> optax.GradientTransformation:
  """AdamW with layer-wise lr decay (`finetune.layer_decay`); weight decay as in pre-training."""
  o = config.optim
  scales = layer_decay_scales(params, depth, config.finetune.layer_decay)
  parts = [optax.clip_by_global_norm(o.clip_grad_norm)] if o.clip_grad_norm > 0 else []
  parts += [
    optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps),
    optax.add_decayed_weights(o.weight_decay, mask=lambda p: weight_decay_mask(p, o.decay_pos_embed)),
    optax.stateless(lambda updates, _: jax.tree.map(lambda u, s: u * s, updates, scales)),
    optax.scale_by_learning_rate(schedule),
  ]
  return optax.chain(*parts)
