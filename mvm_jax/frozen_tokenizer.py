"""The frozen tokenizer that turns VIMPAC's pixels into VQ codes, loaded from the config.

`config.tokenizer.kind` picks it:
  'vqvae'  our VQ-VAE, trained with `python -m mvm_jax.main --config
           configs/vqvae.py:<preset>`; `config.tokenizer.workdir` is that run's
           workdir (architecture from its config.json, weights and EMA codebook
           from its latest checkpoint).
  'dalle'  the DALL-E dVAE encoder (the paper's tokenizer, 8192 codes);
           `config.tokenizer.dalle_encoder` is its `encoder.pkl` or a state_dict.

Both tokenize frames independently with 8× downsampling. `tokenize(variables,
video)` is pure and jittable: it is used inside the pre-training step
(on-the-fly tokens) and by `mvm_jax.tools.extract_tokens` (tokens written once).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mvm_jax.methods import vqvae as vqvae_method


@dataclasses.dataclass(frozen=True)
class FrozenTokenizer:
  """A tokenizer module with its frozen weights, and the pixel spaces around it.

  Attributes:
    module: `tokenizer.VQVAE` or `dalle_dvae.DalleEncoder` (`encode(x) -> codes`).
    variables: its variables ({'params': ..., 'vq_stats': ...} for an EMA codebook).
    vocab_size: number of codes V (codes are 0 .. V-1).
    downsample: pixels per token side f.
    input_mean / input_std: the normalization of the video `tokenize` receives
      (the pre-training run's config.data mean/std).
    pixel_mean / pixel_std: the normalization the VQ-VAE was trained in
      (None for DALL-E, which takes [0, 1] pixels).
    description: where the weights came from (logged, stored with extracted tokens).
  """

  module: nn.Module
  variables: Any
  vocab_size: int
  downsample: int
  input_mean: tuple[float, float, float]
  input_std: tuple[float, float, float]
  pixel_mean: tuple[float, float, float] | None
  pixel_std: tuple[float, float, float] | None
  description: str

  def tokenize(self, variables, video):
    """video float32 [..., H, W, 3] normalized with (input_mean, input_std) →
    codes int32 [..., H/f, W/f]. Pure: pass `self.variables` (or a sharded copy)."""
    pixels = video * jnp.asarray(self.input_std, jnp.float32) + jnp.asarray(self.input_mean, jnp.float32)
    if self.pixel_mean is None:
      x = jnp.clip(pixels, 0.0, 1.0)
    else:
      x = (pixels - jnp.asarray(self.pixel_mean, jnp.float32)) / jnp.asarray(self.pixel_std, jnp.float32)
    return self.module.apply(variables, x, method='encode')


def _tuple3(values) -> tuple[float, float, float]:
  return tuple(float(v) for v in values)


def load_frozen_tokenizer(config) -> FrozenTokenizer:
  """`config.tokenizer` (+ config.data mean/std) → FrozenTokenizer with its weights loaded.

  Raises:
    ValueError naming `config.tokenizer.workdir` / `.dalle_encoder` when the
    weights are not given or cannot be found; ConfigError (a ValueError) naming
    the key of a value no tokenizer can be built with.
  """
  t = config.tokenizer
  vqvae_method.check_tokenizer_config(t)
  mean, std = _tuple3(config.data.mean), _tuple3(config.data.std)
  if t.kind == 'dalle':
    from mvm_jax.models import dalle_dvae

    if not t.dalle_encoder:
      raise ValueError(
        'config.tokenizer.dalle_encoder: kind "dalle" needs the path of the DALL-E encoder.pkl '
        '(or train our own with configs/vqvae.py and set tokenizer.kind=vqvae, tokenizer.workdir=...)'
      )
    state_dict = dalle_dvae.read_dalle_state_dict(t.dalle_encoder)  # read the file once
    module = dalle_dvae.encoder_for_state_dict(state_dict)
    params = dalle_dvae.load_dalle_encoder(state_dict, module)
    return FrozenTokenizer(
      module=module,
      variables={'params': params},
      vocab_size=module.vocab_size,
      downsample=module.downsample,
      input_mean=mean,
      input_std=std,
      pixel_mean=None,
      pixel_std=None,
      description=f'dalle {t.dalle_encoder}',
    )
  return load_vqvae_tokenizer(t.workdir, mean, std)


def load_vqvae_tokenizer(workdir: str, input_mean, input_std) -> FrozenTokenizer:
  """The VQ-VAE trained in `workdir` (config.json + latest checkpoint)."""
  import os

  from mvm_jax import runs

  if not workdir:
    raise ValueError(
      'config.tokenizer.workdir: kind "vqvae" needs the workdir of a trained VQ-VAE '
      '(python -m mvm_jax.main --config configs/vqvae.py:tiny --workdir DIR)'
    )
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    raise ValueError(f'config.tokenizer.workdir: {workdir!r} has no config.json; is it a VQ-VAE run?')
  trained = vqvae_method.VqvaeMethod().run_config(runs.saved_config(workdir))
  if 'vq_recon' not in trained.objectives or 'tokenizer' not in trained:  # what a VQ-VAE run trains
    raise ValueError(
      f'config.tokenizer.workdir: {workdir!r} trained model.name={trained.model.name!r} with objectives '
      f'{list(trained.objectives)}, not a VQ-VAE (vq_recon)'
    )
  module = vqvae_method.vqvae(trained)
  step, items = runs.latest_state_items(workdir, ('params', 'model_state'))
  variables = {'params': items['params'], **items['model_state']}
  return FrozenTokenizer(
    module=module,
    variables=variables,
    vocab_size=int(module.codebook_size),
    downsample=module.downsample,
    input_mean=_tuple3(input_mean),
    input_std=_tuple3(input_std),
    pixel_mean=_tuple3(trained.data.mean),
    pixel_std=_tuple3(trained.data.std),
    description=f'vqvae {os.path.abspath(workdir)} step {step}',
  )
