"""The VQ-VAE tokenizer itself, trained on pixels; no masks.

Its config: `tokenizer` (`models.tokenizer.default_tokenizer_config`, kind 'vqvae'); of the
shared `model` keys it reads `model.dtype`.
"""

from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax.config_schema import fail
from mvm_jax.methods.base import (
  Method,
  ModelSetup,
  Section,
  first_samples,
  pixel_inputs,
  register,
  replicated_jit,
)
from mvm_jax.methods.vimpac import check_tokenizer_config
from mvm_jax.models import mae as mae_lib
from mvm_jax.models import tokenizer as tokenizer_lib
from mvm_jax import sharding


def default_tokenizer_config() -> ml_collections.ConfigDict:
  """`config.tokenizer` (keys: `models.tokenizer.default_tokenizer_config`), kind 'vqvae'."""
  t = tokenizer_lib.default_tokenizer_config()
  t.kind = 'vqvae'
  return t


def validate_tokenizer_config(config) -> None:
  t = config.tokenizer
  check_tokenizer_config(t)
  f = 2 ** len(t.widths)
  if config.data.crop_size % f:
    fail(
      'tokenizer.widths',
      f'{len(t.widths)} stages downsample {f}x, which does not divide data.crop_size={config.data.crop_size}',
    )


TOKENIZER = Section('tokenizer', default_tokenizer_config, validate_tokenizer_config)


@register
class VqvaeMethod(Method):
  name = 'vqvae'
  objectives = ('vq_recon',)
  default_objectives = types.MappingProxyType({'vq_recon': 1.0})
  sections = (TOKENIZER,)
  config_file = 'configs/vqvae.py'

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

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """The first samples' frames beside their reconstructions."""
    from mvm_jax import visualize

    c = exp.config
    n = min(c.num_image_samples, batch['video'].shape[0])
    video = first_samples(exp, batch['video'], n, batch_ndim=5)  # [n, T, H, W, C]
    model, s = exp.model, state
    with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
      recon = replicated_jit(exp, lambda p, ms, x: model.apply({'params': p, **ms}, x)['recon'])(
        s.params, s.model_state, video
      )
    video, recon = jax.device_get((video, recon))
    if jax.process_index() != 0:
      return None
    return visualize.write_frame_reconstructions(
      os.path.join(workdir, 'images'), step, video, recon, c.data.mean, c.data.std
    )
