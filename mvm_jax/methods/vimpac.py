"""VIMPAC: VimpacPretrainer on VQ tokens, read from the batch (`data.source='tokens'`, see
`mvm_jax.tools.extract_tokens`) or made in the step from pixels by the frozen tokenizer
(`config.tokenizer`); block masks from `masking.blocks`."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp

from mvm_jax import token_vocab
from mvm_jax.config_schema import ConfigError
from mvm_jax.masking import blocks
from mvm_jax.methods.base import Method, ModelSetup, first_samples, pixel_inputs, replicated_jit
from mvm_jax import sharding
from mvm_jax.train.step import ModelInputs


class VimpacMethod(Method):
  name = 'vimpac'
  has_video_encoder = True
  uses_tokens = True
  run_sections = ('vimpac', 'tokenizer', 'masking')

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    del total_steps, steps_per_epoch
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

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """For the first samples (first view), the code map, the masked input and the predicted codes
    with right/wrong marks (and the frames when the step tokenizes pixels), with a fixed block mask."""
    from mvm_jax import visualize

    c, inputs = exp.config, exp.inputs
    n = min(c.num_image_samples, batch[inputs.key].shape[0])
    x = first_samples(exp, batch[inputs.key], n, batch_ndim=inputs.sample_ndim)
    rng = jax.random.PRNGKey(c.seed + 1)
    pad_id = exp.model.model.backbone.special_tokens.pad_id

    def forward(params, model_state, frozen, x):
      tokens = x if inputs.preprocess is None else inputs.preprocess(frozen, x)
      mask = exp.masker(rng, tokens.shape[0], tokens == pad_id)
      outputs = exp.model.apply({'params': params, **model_state}, tokens, mask)
      return tokens, outputs['token_mask'], jnp.argmax(outputs['logits'], -1)

    s = state
    with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
      tokens, mask, predicted = jax.device_get(
        replicated_jit(exp, forward)(s.params, s.model_state, s.frozen, x)
      )
    if jax.process_index() != 0:
      return None
    frames = None
    if inputs.preprocess is not None:
      frames = visualize.denormalize(jax.device_get(x), c.data.mean, c.data.std)
    return visualize.write_token_predictions(
      os.path.join(workdir, 'images'), step, tokens, mask, predicted, c.vimpac.vocab_size, frames
    )


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
