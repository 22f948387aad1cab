"""Pre-training methods as objects: one module per model kind, found by `config.model.name`.

  'mae'     `mae.MaeMethod`: MaskedAutoencoder on pixels (MAE-ST, HPM, ViC-MAE).
  'vimpac'  `vimpac.VimpacMethod`: VimpacPretrainer on VQ tokens.
  'vqvae'   `vqvae.VqvaeMethod`: the VQ-VAE tokenizer itself.

`get(config)` is the method a config trains. A `Method` builds its model, inputs and mask policy
(`setup`), says whether the state keeps an EMA teacher and how it moves (`teacher_momentum`), when
each objective starts (`objective_start_steps`) and draws its pictures (`write_images`); the shared
loop (`mvm_jax.train.loop`) asks it and never branches on the method's name.
"""

from __future__ import annotations

from mvm_jax.config_schema import ConfigError
from mvm_jax.methods.base import Method, ModelSetup, pixel_inputs
from mvm_jax.methods.mae import MaeMethod
from mvm_jax.methods.vimpac import VimpacMethod
from mvm_jax.methods.vqvae import VqvaeMethod

METHODS: dict[str, Method] = {m.name: m for m in (MaeMethod(), VimpacMethod(), VqvaeMethod())}

__all__ = ['METHODS', 'Method', 'ModelSetup', 'get', 'pixel_inputs']


def get(config) -> Method:
  """The method of `config.model.name`; a ConfigError naming the known ones if there is none."""
  name = config.model.name
  if name not in METHODS:
    raise ConfigError(f'config.model.name={name!r}: no such method; known: {sorted(METHODS)}')
  return METHODS[name]
