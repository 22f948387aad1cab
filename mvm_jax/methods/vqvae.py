"""The VQ-VAE tokenizer itself, trained on pixels; no masks.

Its config: `tokenizer` (below, kind 'vqvae'); of the shared `model` keys it reads `model.dtype`.
The `tokenizer` section is also VIMPAC's (`methods.vimpac`: which frozen tokenizer makes its tokens,
kind 'dalle' by default): its keys and their checks are here, with `vqvae(config)`, the
`models.tokenizer.VQVAE` they describe (built by this method and by `frozen_tokenizer` for a
trained run).
"""

from __future__ import annotations

import os
import types

import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax.config_schema import ConfigError, fail
from mvm_jax.methods.base import (
  Method,
  ModelSetup,
  Section,
  first_samples,
  pixel_inputs,
  register,
  replicated_jit,
  video_shape,
)
from mvm_jax.models import tokenizer as tokenizer_lib
from mvm_jax import sharding

TOKENIZER_KINDS = ('vqvae', 'dalle')


def default_tokenizer_config(kind: str = 'vqvae') -> ml_collections.ConfigDict:
  """`config.tokenizer`: which tokenizer makes VIMPAC's tokens, and our VQ-VAE's shape.

  kind                 'dalle' (the paper: DALL-E dVAE encoder, K = 8192, weights
                       from `dalle_encoder`; VIMPAC's default) | 'vqvae' (our VQ-VAE,
                       trained here: this method's).
  codebook_size        K, number of codes (VQ-VAE).
  code_dim             D, width of a code vector (VQ-VAE).
  widths               channels of the stride-2 stages (3 stages → 8× downsampling).
  num_res_blocks       residual blocks per stage.
  beta                 commitment weight β.
  ema                  True: EMA codebook ('vq_stats'); False: learned codebook (codebook loss).
  ema_decay, ema_eps   EMA decay and Laplace smoothing epsilon.
  dead_code_threshold  EMA codes whose cluster size (EMA of per-batch counts) falls below this
                       are re-initialized from random encoder outputs of the batch (0 disables).
                       Statistics start at cluster size 1, so with 1.0 (Jukebox's choice) the
                       first update also seeds every unused code from the data.
  dalle_encoder        path of the DALL-E `encoder.pkl` (a pickled torch module) or a
                       state_dict file; see `dalle_dvae.load_dalle_encoder`.
  workdir              kind 'vqvae' as a frozen tokenizer (VIMPAC): the workdir of the
                       VQ-VAE run (`configs/vqvae.py`) whose latest checkpoint to use.
  extract_resize_short_side
                       `tools.extract_tokens` resizes each frame's short side to this, then
                       takes the centre data.crop_size square; 0: to crop_size (the crop spans
                       the short side: VIMPAC's official pre-training tokens, 128 then 128; its
                       fine-tuning also reads tokens of 160 then 128).
  """
  return ml_collections.ConfigDict(
    {
      'kind': kind,
      'codebook_size': 8192,
      'code_dim': 256,
      'widths': (128, 256, 256),
      'num_res_blocks': 2,
      'beta': 0.25,
      'ema': True,
      'ema_decay': 0.99,
      'ema_eps': 1e-5,
      'dead_code_threshold': 1.0,
      'dalle_encoder': '',
      'workdir': '',
      'extract_resize_short_side': 0,
    }
  )


def check_tokenizer_config(t) -> None:
  """ConfigError naming the key of a `config.tokenizer` (`t`) our modules cannot build."""
  if t.kind not in TOKENIZER_KINDS:
    raise ConfigError(f'config.tokenizer.kind must be one of {TOKENIZER_KINDS}, got {t.kind!r}')
  for key in ('codebook_size', 'code_dim', 'num_res_blocks'):
    value = t[key]
    if int(value) != value or value < (0 if key == 'num_res_blocks' else 1):
      raise ConfigError(f'config.tokenizer.{key} must be a positive integer, got {value!r}')
  if not t.widths or any(int(w) < 1 for w in t.widths):
    raise ConfigError(f'config.tokenizer.widths must be positive channel counts, got {t.widths!r}')
  if t.beta < 0:
    raise ConfigError(f'config.tokenizer.beta must be >= 0, got {t.beta!r}')
  if not 0.0 <= t.ema_decay < 1.0:
    raise ConfigError(f'config.tokenizer.ema_decay must be in [0, 1), got {t.ema_decay!r}')
  if t.ema_eps < 0:
    raise ConfigError(f'config.tokenizer.ema_eps must be >= 0, got {t.ema_eps!r}')
  if t.get('extract_resize_short_side', 0) < 0:
    raise ConfigError(
      f'config.tokenizer.extract_resize_short_side must be >= 0, got {t.extract_resize_short_side!r}'
    )


def validate_tokenizer_config(config) -> None:
  t = config.tokenizer
  check_tokenizer_config(t)
  f = 2 ** len(t.widths)
  if config.data.crop_size % f:
    fail(
      'tokenizer.widths',
      f'{len(t.widths)} stages downsample {f}x, which does not divide data.crop_size={config.data.crop_size}',
    )


def vqvae(config, dtype=jnp.float32) -> tokenizer_lib.VQVAE:
  """`config.tokenizer` (checked: `check_tokenizer_config`) → `VQVAE` (any kind: its VQ-VAE fields)."""
  t = config.tokenizer
  check_tokenizer_config(t)
  return tokenizer_lib.VQVAE(
    codebook_size=int(t.codebook_size),
    code_dim=int(t.code_dim),
    widths=tuple(int(w) for w in t.widths),
    num_res_blocks=int(t.num_res_blocks),
    beta=float(t.beta),
    ema=bool(t.ema),
    ema_decay=float(t.ema_decay),
    ema_eps=float(t.ema_eps),
    dead_code_threshold=float(t.dead_code_threshold),
    dtype=dtype,
  )


def extract_resize_short_side(config) -> int:
  """`config.tokenizer.extract_resize_short_side` (0 without the section or the key)."""
  t = config.get('tokenizer')
  return int(t.get('extract_resize_short_side', 0)) if t is not None else 0


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
    model = vqvae(config, jnp.dtype(config.model.dtype))
    t, h, w = video_shape(config)
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

  def extract_resize_short_side(self, config) -> int:
    return extract_resize_short_side(config)
