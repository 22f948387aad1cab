"""Pre-training methods as objects: one module per model kind, found by `config.model.name`.

  'mae'         `mae.MaeMethod`: MaskedAutoencoder on pixels (MAE-ST, HPM, ViC-MAE).
  'mae_motion'  `mae_motion.MotionMaeMethod`: the same, reconstructing frame differences (README
                "Adding a method: a worked example").
  'vimpac'      `vimpac.VimpacMethod`: VimpacPretrainer on VQ tokens.
  'vqvae'       `vqvae.VqvaeMethod`: the VQ-VAE tokenizer itself.

Every module of this package is imported with it, and each registers its methods (`register`).

`get(config)` is the method a config trains, `load_run_config(workdir)` the config a saved run
trained with. A `Method` owns its config: the objectives it can train, its `model` keys
(`model_defaults`) and the sections its runs carry, with their defaults and checks (`base_config`,
`validate`, `run_config`). It
builds its model, inputs and mask policy (`setup`), says whether the state keeps an EMA teacher and
how it moves (`teacher_momentum`), when each objective starts (`objective_start_steps`) and draws
its pictures (`write_images`); the shared loop (`mvm_jax.train.loop`) and the config schema ask it
and never branch on the method's name. Evaluation asks it for the run's video encoder
(`frozen_encoder`, `classifier`, `token_grid`, `feature_width`). The models (`mvm_jax.models`) take
explicit arguments: reading the config to build them is the methods' job, in their modules.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping

import ml_collections

from mvm_jax import config_schema, runs
from mvm_jax.config_schema import ConfigError
from mvm_jax.methods.base import (
  METHODS,
  EncoderInput,
  Method,
  ModelSetup,
  Section,
  pixel_inputs,
  register,
  video_shape,
)

# Each module of this package registers the methods it defines (`register`): import them all, so that
# a new method is one new module here (and its config file), named nowhere else.
for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')

__all__ = [
  'METHODS',
  'EncoderInput',
  'Method',
  'ModelSetup',
  'Section',
  'base_config',
  'by_name',
  'get',
  'load_run_config',
  'pixel_inputs',
  'register',
  'set_objectives',
  'validate',
  'video_shape',
]


def by_name(name: str) -> Method:
  """The method called `name` (`config.model.name`); a ConfigError naming the known ones if none."""
  if name not in METHODS:
    raise ConfigError(f'config.model.name={name!r}: no such method; known: {sorted(METHODS)}')
  return METHODS[name]


def get(config) -> Method:
  """The method of `config.model.name`; a ConfigError naming the known ones if there is none."""
  return by_name(config.model.name)


def base_config(
  name: str = 'mae', objectives: Mapping[str, float] | None = None
) -> ml_collections.ConfigDict:
  """Method `name`'s config at its defaults: the shared keys and the sections it reads when it
  trains `objectives` (default: its `default_objectives`). Config files start from it."""
  return by_name(name).base_config(objectives)


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote to `workdir/config.json`, over today's defaults of its method
  (`Method.run_config`): keys added since the run was made get their default values. Unlocked.

  Raises FileNotFoundError when `workdir` has no config.json, ConfigError for an unknown method.
  """
  saved = runs.saved_config(workdir)
  return by_name(saved.get('model', {}).get('name', 'mae')).run_config(saved)


def set_objectives(config, objectives: Mapping[str, float]) -> None:
  """`config.objectives = objectives`, adding the sections of the objectives now trained (at their
  defaults) and dropping those of the objectives no longer trained (`Method.set_objectives`)."""
  get(config).set_objectives(config, objectives)


def validate(config, *, pretraining: bool = True) -> None:
  """Raise ConfigError naming the key for any inconsistent value, `config.evaluators` aside: the
  keys every method shares (`config_schema.validate_shared`), then the method's model keys and
  sections (`Method.validate`). Nothing is changed: validating twice is validating once.

  `pretraining=False` (evaluations of a frozen or fine-tuned encoder) skips the keys only
  pre-training reads: objectives and their sections (HPM, contrastive heads).
  """
  method = get(config)
  config_schema.validate_shared(config, pretraining=pretraining)
  method.validate(config, pretraining=pretraining)
