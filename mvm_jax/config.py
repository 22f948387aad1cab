"""The config schema shared by every method, and validation with clear errors.

`base_config()` holds every key with its default; a method's config file
(`configs/<method>.py`) starts from it and sets a preset. The result is
locked, so a misspelt `--config.x.y=` override fails at the command line,
and `validate(config)` rejects inconsistent values before anything compiles.

The schema and the checks of its sections live in :mod:`mvm_jax.config_schema`
(which the evaluation stack imports); this module adds the checks of
`config.evaluators`, which need that stack.
"""

from __future__ import annotations

from mvm_jax.config_schema import ConfigError, base_config, sibling_config, validate_without_evaluators

__all__ = ['ConfigError', 'base_config', 'sibling_config', 'validate']


def validate(config, *, pretraining: bool = True) -> None:
  """Raise ConfigError naming the key for any inconsistent value.

  `pretraining=False` (evaluations of a frozen or fine-tuned encoder) skips
  the keys only pre-training reads: objectives, HPM, contrastive heads, evaluators.
  """
  validate_without_evaluators(config, pretraining=pretraining)
  if pretraining and config.get('evaluators'):  # (none: no import of the evaluation stack)
    from mvm_jax.evaluate import evaluators  # here: it imports Grain, PyAV and the models

    evaluators.validate(config)  # config.evaluators (after the mesh keys it builds a mesh from)
