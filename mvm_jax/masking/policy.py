"""Where each step's masks come from: a plain masker, or HPM's teacher.

A mask policy is `policy(rng, step, video, teacher) -> (Mask, metrics)`,
called inside the jitted step on the flattened batch video [B, T, H, W, C]
(two-view batches: [2N, ...], views adjacent). `teacher` is the EMA
teacher's params ({} when the method has none).
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


def teacher_masks(model, hpm_config, grid, mask_ratio: float, total_steps: int, steps_per_epoch: int):
  """HPM easy-to-hard masks: the teacher (`model.predict_losses` with the EMA
  params) predicts per-patch losses of the unmasked clip; α_t of the masked
  patches are the hardest by that prediction, the rest uniformly random.
  α_t moves per epoch ((epoch + 1) / E, the official code) or, with
  `hpm.alpha_per_step`, per step from α_0.

  Returns fn(rng, step, video, teacher) -> (Mask, hard [B, N] bool, α_t,
  predicted losses [B, N]).
  """
  h = hpm_config
  num_keep = video.num_visible('random', grid, mask_ratio)

  def masks(rng, step, video, teacher):
    predicted = model.apply({'params': teacher}, video, method=model.predict_losses)
    alpha = hard_patches.alpha_schedule(
      step, total_steps, h.alpha_0, h.alpha_T, h.alpha_manner, None if h.alpha_per_step else steps_per_epoch
    )
    mask, hard = hard_patches.hard_patch_mask(
      rng, predicted, num_keep, alpha, selection=h.selection, per_frame=h.per_frame, grid=grid
    )
    return mask, hard, alpha, predicted

  return masks


def hard_patch_policy(
  model, hpm_config, grid, mask_ratio: float, total_steps: int, steps_per_epoch: int
) -> MaskPolicy:
  """`teacher_masks` as a policy; metrics hpm/alpha, hpm/hard_fraction."""
  masks = teacher_masks(model, hpm_config, grid, mask_ratio, total_steps, steps_per_epoch)

  def policy(rng, step, video, teacher):
    mask, hard, alpha, _ = masks(rng, step, video, teacher)
    return mask, hard_patches.hard_mask_metrics(alpha, hard, mask.mask)

  return policy


def uses_teacher(config) -> bool:
  """HPM's EMA teacher is kept when the loss predictor picks the masks."""
  return 'loss_prediction' in config.objectives and bool(config.hpm.hard_masking)


def make_mask_policy(config, model, masker, total_steps: int, steps_per_epoch: int = 1) -> MaskPolicy:
  """HPM's teacher policy when configured, else `masker` (from `video.make_masker`)."""
  if uses_teacher(config):
    return hard_patch_policy(
      model, config.hpm, model.encoder.grid, config.masking.ratio, total_steps, steps_per_epoch
    )
  return random_policy(masker)
