"""Pixel MAE: MaskedAutoencoder on pixels (MAE-ST, HPM, ViC-MAE); masks from `masking` or HPM's teacher."""

from __future__ import annotations

import jax.numpy as jnp

from mvm_jax import masking
from mvm_jax.masking import policy as policy_lib
from mvm_jax.methods.base import Method, ModelSetup, pixel_inputs
from mvm_jax.models import mae as mae_lib


class MaeMethod(Method):
  name = 'mae'

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
