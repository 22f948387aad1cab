"""Configs and their validation with clear errors.

`base_config(method, objectives)` is a method's config at its defaults: the keys every method
shares (:mod:`mvm_jax.config_schema`) and the sections that method and its objectives read (their
defaults and checks live with the method: :mod:`mvm_jax.methods`). A config file
(`configs/<method>.py`) starts from it and sets a preset. The result is locked, so a misspelt
`--config.x.y=` override fails at the command line, and `validate(config)` rejects inconsistent
values before anything compiles.

The checks of the shared keys live in :mod:`mvm_jax.config_schema`, the method's in its `Method`
(`methods.validate` runs both; the evaluation stack calls it); this module adds the checks of
`config.evaluators`, which need that stack.
"""

from __future__ import annotations

from mvm_jax import methods
from mvm_jax.config_schema import ConfigError
from mvm_jax.methods import base_config, set_objectives

__all__ = ['ConfigError', 'base_config', 'set_objectives', 'validate']


def validate(config, *, pretraining: bool = True) -> None:
  """Raise ConfigError naming the key for any inconsistent value.

  `pretraining=False` (evaluations of a frozen or fine-tuned encoder) skips
  the keys only pre-training reads: objectives and their sections (HPM, contrastive heads),
  evaluators. Validating twice is validating once: nothing is changed.
  """
  methods.validate(config, pretraining=pretraining)
  if pretraining and config.get('evaluators'):  # (none: no import of the evaluation stack)
    from mvm_jax.evaluate import evaluators  # here: it imports Grain, PyAV and the models

    evaluators.validate(config)  # config.evaluators (after the mesh keys it builds a mesh from)
