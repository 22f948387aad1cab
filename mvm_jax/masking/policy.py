"""Where each step's masks come from: a plain masker, or HPM's teacher.

A mask policy is `policy(rng, step, video, teacher) -> (Mask, metrics)`,
called inside the jitted step on the flattened batch video [B, T, H, W, C]
(two-view batches: [2N, ...], views adjacent). `teacher` is the EMA
teacher's params ({} when the method has none). Nothing here reads the
config: the method picks the policy and its numbers from it (`Method.setup`).
"""

from __future__ import annotations

from collections.abc import Callable

from mvm_jax.masking import hard_patches, video

MaskPolicy = Callable


def random_policy(masker) -> MaskPolicy:
  """Masks from `video.make_masker(...)`: independent of the model."""

  def policy(rng, step, video, teacher):
    del step, teacher
    return masker(rng, video.shape[0]), {}

  return policy


def teacher_masks(
  model,
  grid,
  mask_ratio: float,
  total_steps: int,
  steps_per_epoch: int | None,
  *,
  alpha_0: float,
  alpha_T: float,
  alpha_manner: str,
  selection: str,
  per_frame: bool,
):
  """HPM easy-to-hard masks: the teacher (`model.predict_losses` with the EMA
  params) predicts per-patch losses of the unmasked clip; α_t of the masked
  patches are the hardest by that prediction (`selection` 'hard'; 'easy': the
  easiest), the rest uniformly random. α_t follows `hard_patches.alpha_schedule`
  (`alpha_0` → `alpha_T` as `alpha_manner`), per epoch of `steps_per_epoch` steps
  ((epoch + 1) / E, the official code) or, with `steps_per_epoch` None, per step.
  `per_frame`: the same hard count in every temporal slice of `grid`.

  Returns fn(rng, step, video, teacher) -> (Mask, hard [B, N] bool, α_t,
  predicted losses [B, N]).
  """
  num_keep = video.num_visible('random', grid, mask_ratio)

  def masks(rng, step, video, teacher):
    predicted = model.apply({'params': teacher}, video, method=model.predict_losses)
    alpha = hard_patches.alpha_schedule(step, total_steps, alpha_0, alpha_T, alpha_manner, steps_per_epoch)
    mask, hard = hard_patches.hard_patch_mask(
      rng, predicted, num_keep, alpha, selection=selection, per_frame=per_frame, grid=grid
    )
    return mask, hard, alpha, predicted

  return masks


def hard_patch_policy(masks) -> MaskPolicy:
  """`masks` (from `teacher_masks`) as a policy; metrics hpm/alpha, hpm/hard_fraction."""

  def policy(rng, step, video, teacher):
    mask, hard, alpha, _ = masks(rng, step, video, teacher)
    return mask, hard_patches.hard_mask_metrics(alpha, hard, mask.mask)

  return policy
