"""The model a pre-training config trains, with what it reads and how its masks are drawn.

`config.model.name` picks one:
  'mae'     MaskedAutoencoder on pixels (MAE-ST, HPM, ViC-MAE); masks from
            `masking` or HPM's teacher.
  'vimpac'  VimpacPretrainer on VQ tokens: read from the batch
            (`data.source='tokens'`, see `mvm_jax.tools.extract_tokens`) or
            made in the step from pixels by the frozen tokenizer
            (`config.tokenizer`); block masks from `masking.blocks`.
  'vqvae'   the VQ-VAE tokenizer itself on pixels; no masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mvm_jax import masking, token_vocab
from mvm_jax.config import ConfigError
from mvm_jax.models import mae as mae_lib
from mvm_jax.masking import blocks
from mvm_jax.masking import policy as policy_lib
from mvm_jax.train.step import ModelInputs


@dataclasses.dataclass
class ModelSetup:
  """What `loop.build_experiment` needs from the method's model.

  model: the module the step applies as model.apply(variables, inputs, mask, deterministic=...).
  inputs: which batch entry it reads, and the preprocessing in the step.
  masker: the configured masker (pictures, tools): MAE (rng, batch) -> Mask;
    VIMPAC (rng, batch, pad=None) -> [B, T, H, W] bool; None for the VQ-VAE.
  policy: mask_policy(rng, step, inputs, teacher) -> (mask, metrics).
  init_variables: rng -> Flax variables (for `create_sharded_state`).
  frozen: variables the step reads but never trains ({} when none).
  grid: (T, H, W) of the model's token map.
  description: one line for the log.
  """

  model: nn.Module
  inputs: ModelInputs
  masker: Callable | None
  policy: Callable
  init_variables: Callable[[jax.Array], Any]
  frozen: Any
  grid: tuple[int, int, int]
  description: str = ''


def build_model_setup(config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
  if config.model.name == 'mae':
    return _mae_setup(config, total_steps, steps_per_epoch)
  builders = {'vimpac': _vimpac_setup, 'vqvae': _vqvae_setup}
  return builders[config.model.name](config, total_steps)


def _mae_setup(config, total_steps: int, steps_per_epoch: int) -> ModelSetup:
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


def _vqvae_setup(config, total_steps: int) -> ModelSetup:
  del total_steps
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


def pixel_inputs(config, preprocess=None) -> ModelInputs:
  """The batch's 'video' pixels (uint8, normalised in the step with config.data.mean / std)."""
  d = config.data
  return ModelInputs('video', 5, preprocess, tuple(d.mean), tuple(d.std))


def token_input(config) -> tuple[ModelInputs, Any, str]:
  """Where VIMPAC's tokens come from: (inputs, frozen variables, description).

  `data.source='tokens'`: the batch's 'tokens' (checked against the token
  dataset's vocabulary and map size). Else the frozen tokenizer of
  `config.tokenizer` tokenizes the batch's pixels in the step.
  """
  from mvm_jax.models import factorized

  v = config.vimpac
  token_shape = factorized.token_shape_from_config(config)
  if config.data.source == 'tokens':
    from mvm_jax.data import tokens

    info = tokens.token_info(config.data)
    if int(info['vocab_size']) != v.vocab_size:
      raise ConfigError(
        f'config.vimpac.vocab_size={v.vocab_size}, but the token dataset {config.data.tfds_name!r} '
        f'has {info["vocab_size"]} codes'
      )
    if tuple(info['token_shape']) != token_shape[1:]:
      raise ConfigError(
        f'config.data.crop_size / vimpac.downsample give {token_shape[1:]} tokens a frame, but the token '
        f'dataset {config.data.tfds_name!r} has {tuple(info["token_shape"])}'
      )
    return ModelInputs('tokens', 4, None), {}, f'tokens from {config.data.tfds_name}'
  from mvm_jax import frozen_tokenizer

  tok = frozen_tokenizer.load_frozen_tokenizer(config)
  if tok.vocab_size != v.vocab_size:
    raise ConfigError(
      f'config.vimpac.vocab_size={v.vocab_size}, but the tokenizer has {tok.vocab_size} codes'
    )
  if tok.downsample != v.downsample:
    raise ConfigError(
      f'config.vimpac.downsample={v.downsample}, but the tokenizer downsamples {tok.downsample}x'
    )
  preprocess = lambda frozen, video: jax.lax.stop_gradient(tok.tokenize(frozen, video))
  return pixel_inputs(config, preprocess), tok.variables, f'tokens made on the fly by {tok.description}'


def _vimpac_setup(config, total_steps: int) -> ModelSetup:
  del total_steps
  from mvm_jax.models import factorized

  model = factorized.pretrainer_from_config(config)
  token_shape = factorized.token_shape_from_config(config)
  inputs, frozen, source = token_input(config)
  masker = blocks.masker_from_config(config.masking, token_shape)
  pad_id = token_vocab.special_token_ids(config.vimpac.vocab_size).pad_id

  def policy(rng, step, tokens, teacher):
    del step, teacher
    mask = masker(rng, tokens.shape[0], tokens == pad_id)
    return mask, {}

  def init_variables(rng):
    tokens = jnp.zeros((2,) + token_shape, jnp.int32)
    return model.init({'params': rng, 'dropout': rng}, tokens, jnp.zeros(tokens.shape, bool))

  return ModelSetup(
    model=model,
    inputs=inputs,
    masker=masker,
    policy=policy,
    init_variables=init_variables,
    frozen=frozen,
    grid=token_shape,
    description=f'VIMPAC on {"x".join(map(str, token_shape))} {source}',
  )
