"""The VQ-VAE tokenizer itself, trained on pixels; no masks."""

from __future__ import annotations

import jax.numpy as jnp

from mvm_jax.methods.base import Method, ModelSetup, pixel_inputs
from mvm_jax.models import mae as mae_lib


class VqvaeMethod(Method):
  name = 'vqvae'

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    del total_steps, steps_per_epoch
    from mvm_jax.models import tokenizer

    model = tokenizer.vqvae_from_config(config, jnp.dtype(config.model.dtype))
    t, h, w = mae_lib.video_shape(config)
    f = model.downsample

    def init_variables(rng):
      return model.init({'params': rng}, jnp.zeros((2, t, h, w, 3), jnp.float32))

    return ModelSetup(
      model=model,
      inputs=pixel_inputs(config),
      masker=None,
      policy=lambda rng, step, video, teacher: (None, {}),
      init_variables=init_variables,
      frozen={},
      grid=(t, h // f, w // f),
      description=f'VQ-VAE, {model.codebook_size} codes, {f}x downsampling',
    )
