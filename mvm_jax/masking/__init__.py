"""Masking: which tokens a model sees, for every method.

  video.py         maskers of spacetime patches with a static visible count (for sparse encoders):
                   random, tube, frame, cube; the `Mask` record, `make_masker`, `num_visible`
  blocks.py        VIMPAC token masking: block masks (+ closed-form ratio), the i.i.d. ablation,
                   [MASK] / BERT corruption
  hard_patches.py  HPM easy-to-hard masks: the patches a teacher predicts are hardest
  policy.py        where each train step's masks come from: a plain masker or HPM's teacher

The names of `video` are re-exported here (`masking.make_masker`, `masking.Mask`, ...); the other
modules are imported by name (`from mvm_jax.masking import blocks`). VIMPAC's token ids (PAD, [MASK])
are not masking's: they live in `mvm_jax.token_vocab`.
"""

from mvm_jax.masking.video import (
  MASKERS,
  Grid,
  Mask,
  cube_mask,
  default_num_cubes,
  frame_mask,
  make_masker,
  mask_from_scores,
  mask_to_grid,
  num_visible,
  random_mask,
  tube_mask,
)

__all__ = [
  'MASKERS',
  'Grid',
  'Mask',
  'cube_mask',
  'default_num_cubes',
  'frame_mask',
  'make_masker',
  'mask_from_scores',
  'mask_to_grid',
  'num_visible',
  'random_mask',
  'tube_mask',
]
