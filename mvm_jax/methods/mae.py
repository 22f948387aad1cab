"""Pixel MAE: MaskedAutoencoder on pixels (MAE-ST, HPM, ViC-MAE); masks from `masking` or HPM's teacher."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from mvm_jax import masking
from mvm_jax.masking import policy as policy_lib
from mvm_jax.methods.base import Method, ModelSetup, first_samples, pixel_inputs, replicated_jit
from mvm_jax.models import ema
from mvm_jax.models import mae as mae_lib
from mvm_jax import sharding


class MaeMethod(Method):
  name = 'mae'
  has_video_encoder = True

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    model = mae_lib.mae_from_config(config)
    grid = model.encoder.grid
    masker = masking.make_masker(config.masking.kind, grid, config.masking.ratio)
    shape = (2,) + mae_lib.video_shape(config) + (3,)

    def init_variables(rng):
      return model.init({'params': rng, 'dropout': rng}, jnp.zeros(shape, jnp.float32), masker(rng, shape[0]))

    return ModelSetup(
      model=model,
      inputs=pixel_inputs(config),
      masker=masker,
      policy=policy_lib.make_mask_policy(config, model, masker, total_steps, steps_per_epoch),
      init_variables=init_variables,
      frozen={},
      grid=grid,
      description='MAE on pixels',
    )

  def teacher_momentum(self, config, steps_per_epoch: int):
    """HPM's EMA teacher, kept when the loss predictor picks the masks."""
    if not policy_lib.uses_teacher(config):
      return None
    h = config.hpm

    def momentum(step):
      return ema.momentum_schedule(
        step, steps_per_epoch, h.ema_momentum, h.ema_momentum_final, h.ema_momentum_epochs
      )

    return momentum

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """Reconstructions of the first samples of `batch` (first view of pairs) with
    a fixed random mask, or for HPM the teacher's mask at this step, beside
    the teacher's predicted-loss heat map."""
    from mvm_jax import visualize

    c = exp.config
    n = min(c.num_image_samples, batch['video'].shape[0])
    video = first_samples(exp, batch['video'], n, batch_ndim=5)  # [n, T, H, W, C]
    rng = jax.random.PRNGKey(c.seed + 1)
    model, s = exp.model, state

    def forward(params, model_state, teacher, video):
      predicted, hard = None, None
      if policy_lib.uses_teacher(c):
        masks = policy_lib.teacher_masks(
          model, c.hpm, model.encoder.grid, c.masking.ratio, exp.total_steps, exp.steps_per_epoch
        )
        mask, hard, _, predicted = masks(rng, step, video, teacher)
      else:
        mask = exp.masker(rng, video.shape[0])
      outputs = model.apply({'params': params, **model_state}, video, mask)
      return {k: outputs[k] for k in ('pred', 'target', 'mask')}, predicted, hard

    with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
      outputs, predicted, hard = jax.device_get(
        replicated_jit(exp, forward)(s.params, s.model_state, s.teacher, video)
      )
    if jax.process_index() != 0:
      return None
    return visualize.write_reconstructions(
      os.path.join(workdir, 'images'),
      step,
      outputs,
      model.encoder.grid,
      model.target_patch,
      c.model.norm_pix_loss,
      c.data.mean,
      c.data.std,
      n,
      predicted_loss=predicted,
      hard=hard,
      norm_pix_eps=c.model.norm_pix_eps,
    )
