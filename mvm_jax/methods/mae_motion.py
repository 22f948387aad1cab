"""MAE with a motion target (`model.name='mae_motion'`): MAE-ST reconstructs frame differences.

README "Adding a method: a worked example". Everything is MAE-ST's (`mae.MaeMethod`: masks, model,
objectives, pictures, frozen evaluation) except the target: at each frame t that the decoder
predicts (`model.pred_t_dim` of them) it reconstructs x[t + g] − x[t] instead of x[t], the temporal
difference of the normalised frames, g = `motion.frame_gap` frames apart. Pixels that do not move are
a zero target, so the loss goes to what moves (MotionMAE, Yang et al. 2022, predicts such a target
beside the frame). `pixel_mse` compares prediction and target as for pixels (per-patch norm-pix with
`model.norm_pix_loss`), and the pictures show the differences (the data's mean colour: no change).
A clip with a cut, or one that loops a short video (`data.short_videos='loop'`), jumps there: to this
target, all of it motion.

Its config: MAE-ST's sections (`masking`, and those of the objectives it trains) and `motion`:
  frame_gap  frames between the two of each difference, in [1, data.num_frames); a predicted frame
             with fewer than frame_gap frames after it takes the last difference of the clip.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from mvm_jax.config_schema import fail
from mvm_jax.methods.base import Section, register
from mvm_jax.methods.mae import MASKING, MaeMethod, autoencoder
from mvm_jax.models import mae as mae_lib
from mvm_jax.models import vit


def motion_frames(num_frames: int, pred_t_dim: int, frame_gap: int) -> np.ndarray:
  """The first frame j of each predicted frame's difference x[j + frame_gap] − x[j]: MAE-ST's
  predicted frames (`target_frame_indices`), at most num_frames − 1 − frame_gap."""
  return np.minimum(mae_lib.target_frame_indices(num_frames, pred_t_dim), num_frames - 1 - frame_gap)


class MotionAutoencoder(mae_lib.MaskedAutoencoder):
  """MAE-ST whose target is the difference of frames `frame_gap` apart."""

  frame_gap: int = 1

  def targets(self, video):
    """[B, T, H, W, C] → [B, N, P] patches of x[j + frame_gap] − x[j] (j: `motion_frames`)."""
    first = motion_frames(self.num_frames, self.pred_t_dim, self.frame_gap)
    return vit.patchify(video[:, first + self.frame_gap] - video[:, first], self.target_patch)


def default_motion_config() -> ml_collections.ConfigDict:
  """`config.motion` (keys in the module docstring)."""
  return ml_collections.ConfigDict(dict(frame_gap=1))


def validate_motion_config(config) -> None:
  gap, frames = config.motion.frame_gap, config.data.num_frames
  if not 1 <= gap < frames:
    fail('motion.frame_gap', f'{gap} is outside [1, data.num_frames={frames})')


MOTION = Section('motion', default_motion_config, validate_motion_config)


@register
class MotionMaeMethod(MaeMethod):
  name = 'mae_motion'
  sections = (MASKING, MOTION)
  config_file = 'configs/mae_motion.py'
  target = 'frame differences'
  run_sections = ('motion',)  # the probes, k-NN and fine-tuning of a run validate its sections

  def model(self, config) -> MotionAutoencoder:
    return autoencoder(config, cls=MotionAutoencoder, frame_gap=config.motion.frame_gap)
