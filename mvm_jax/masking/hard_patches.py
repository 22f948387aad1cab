"""HPM easy-to-hard masks: mask the patches a teacher predicts are hardest.

A teacher (EMA of the student) predicts a reconstruction loss for every
patch of the unmasked clip. Of the N - n_keep masked patches, a share α_t
(growing with training, `alpha_schedule`) is "hard": the patches with the
highest predicted loss; the rest are drawn uniformly at random from the
remaining patches. Vectorized with static shapes: give every patch a random
score, set +inf on the hard set, and let `video.mask_from_scores` keep the
lowest scores.

Ablations (HPM Tables 2-3, 10-11): `selection='easy'` takes the LOWEST
predicted loss (argmin); `alpha_schedule(manner='hard_to_easy')` runs the
schedule backwards, `manner='fixed'` holds α_T; `per_frame=True` picks the
same number of hard patches in every temporal slice.
"""

from __future__ import annotations

import math

import einops
import jax
import jax.numpy as jnp

from mvm_jax.masking import video

SELECTIONS = ('hard', 'easy')
FLOOR_SLACK = 1e-4
ALPHA_MANNERS = ('easy_to_hard', 'hard_to_easy', 'fixed')


def alpha_schedule(
  step,
  total_steps: int,
  alpha_0: float = 0.0,
  alpha_T: float = 0.5,
  manner='easy_to_hard',
  steps_per_epoch: int | None = None,
):
  """Hard share α_t of the masked patches at `step` (HPM Eq. 8).

  Args:
    step: scalar int (may be traced), 0 at the first step.
    total_steps: T > 0; the progress t/T is clipped to [0, 1].
    alpha_0, alpha_T: α at the start and at the end of training.
    manner: 'easy_to_hard' α_0 + t/T·(α_T - α_0); 'hard_to_easy' the same
      schedule reversed, α_T + t/T·(α_0 - α_T); 'fixed' α_T throughout.
    steps_per_epoch: None: per-step progress t/T from 0. An int: per-epoch
      progress (epoch + 1) / E with E = ceil(T / steps_per_epoch) epochs, as
      HPM's official code (constant within an epoch, α_T in the last one).

  Returns:
    float32 scalar.
  """
  if manner not in ALPHA_MANNERS:
    raise ValueError(f'hpm.alpha_manner={manner!r}; valid: {ALPHA_MANNERS}')
  if total_steps <= 0:
    raise ValueError(f'total_steps={total_steps} must be > 0')
  step = jnp.asarray(step, jnp.float32)
  if steps_per_epoch is None:
    progress = step / total_steps
  else:
    if steps_per_epoch <= 0:
      raise ValueError(f'steps_per_epoch={steps_per_epoch} must be > 0')
    epochs = math.ceil(total_steps / steps_per_epoch)
    progress = (jnp.floor(step / steps_per_epoch) + 1.0) / epochs
  progress = jnp.clip(progress, 0.0, 1.0)
  if manner == 'fixed':
    return jnp.full((), alpha_T, jnp.float32)
  start, end = (alpha_0, alpha_T) if manner == 'easy_to_hard' else (alpha_T, alpha_0)
  return start + progress * (end - start)


def _rank(key):
  """[..., L] → [..., L] int32: position of each entry in ascending order (stable)."""
  return jnp.argsort(jnp.argsort(key, axis=-1, stable=True), axis=-1).astype(jnp.int32)


def _hard_set(key, num_masked: int, alpha, per_frame_slices: int | None):
  """[B, N] bool: the floor(α·num_masked) entries with the lowest `key`
  (per frame: the floor(α·num_masked/T') lowest of each of T' slices). Floor,
  as HPM's official code (int(α·M)): 13, not 14, of 28 at α = 0.475."""
  # + FLOOR_SLACK: α in float32 can land just under an integer count float64 reaches.
  if per_frame_slices is None:
    count = jnp.clip(jnp.floor(alpha * num_masked + FLOOR_SLACK), 0, num_masked).astype(jnp.int32)
    return _rank(key) < count
  t = per_frame_slices
  count = jnp.clip(jnp.floor(alpha * num_masked / t + FLOOR_SLACK), 0, num_masked // t).astype(jnp.int32)
  ranks = _rank(einops.rearrange(key, 'b (t s) -> b t s', t=t))
  return einops.rearrange(ranks < count, 'b t s -> b (t s)')


def hard_patch_mask(
  rng: jax.Array,
  predicted_loss: jax.Array,
  num_keep: int,
  alpha,
  *,
  selection: str = 'hard',
  per_frame: bool = False,
  grid: video.Grid | None = None,
) -> tuple[video.Mask, jax.Array]:
  """Easy-to-hard mask from a teacher's per-patch predicted losses.

  Of the M = N - num_keep masked patches, floor(α·M) are chosen by predicted
  loss (the highest for 'hard', the lowest for 'easy'; ties go to the lower
  index); the other M - floor(α·M) are uniformly random among the rest.
  Sample b draws its random scores from fold_in(rng, b), as
  `video.make_masker` does, so its mask depends on b only.

  Args:
    rng: PRNG key.
    predicted_loss: [B, N] teacher's predicted loss per patch (stop-gradient
      is applied here).
    num_keep: static number of visible patches, 0 <= num_keep <= N.
    alpha: scalar in [0, 1] (may be traced, e.g. from `alpha_schedule`).
    selection: 'hard' (argmax, HPM default) or 'easy' (argmin ablation).
    per_frame: choose the hard share independently in each of the T'
      temporal slices of `grid`: floor(α·M/T') per slice (at most
      floor(M/T')), so every frame has the same hard count; the random
      rest is drawn over the whole clip.
    grid: (T', H', W') with T'·H'·W' = N; required when per_frame.

  Returns:
    (Mask with ids_keep [B, num_keep], ids_restore [B, N], mask [B, N]
     float32 with exactly M ones per row; hard [B, N] bool, the patches
     masked because of their predicted loss, a subset of the masked ones).
  """
  if selection not in SELECTIONS:
    raise ValueError(f'hpm.selection={selection!r}; valid: {SELECTIONS}')
  batch, num_tokens = predicted_loss.shape
  if not 0 <= num_keep <= num_tokens:
    raise ValueError(f'num_keep={num_keep} must be in [0, {num_tokens}]')
  slices = None
  if per_frame:
    if grid is None or math.prod(grid) != num_tokens:
      raise ValueError(f'per_frame needs grid with prod(grid) = N = {num_tokens}, got {grid}')
    slices = int(grid[0])
  predicted_loss = jax.lax.stop_gradient(predicted_loss.astype(jnp.float32))
  key = -predicted_loss if selection == 'hard' else predicted_loss
  hard = _hard_set(key, num_tokens - num_keep, jnp.asarray(alpha, jnp.float32), slices)
  sample_rngs = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(batch))
  scores = jax.vmap(lambda r: jax.random.uniform(r, (num_tokens,)))(sample_rngs)
  mask = video.mask_from_scores(jnp.where(hard, jnp.inf, scores), num_keep)
  return mask, hard


def hard_mask_metrics(alpha, hard: jax.Array, mask: jax.Array) -> dict:
  """{'hpm/alpha': α_t, 'hpm/hard_fraction': hard share of the masked patches}.

  hard: [B, N] bool; mask: [B, N] float, 1 = masked.
  """
  fraction = jnp.sum(hard.astype(jnp.float32)) / jnp.maximum(jnp.sum(mask), 1.0)
  return {'hpm/alpha': jnp.asarray(alpha, jnp.float32), 'hpm/hard_fraction': fraction}
