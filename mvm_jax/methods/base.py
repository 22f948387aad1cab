"""What every method gives the shared training loop: `Method`, and the `ModelSetup` it builds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

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


class Method:
  """One pre-training method: `name` is its `config.model.name`; subclasses build its model."""

  name: str = ''

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    """The model this config trains, what it reads, how its masks are drawn."""
    raise NotImplementedError


def pixel_inputs(config, preprocess=None) -> ModelInputs:
  """The batch's 'video' pixels (uint8, normalised in the step with config.data.mean / std)."""
  d = config.data
  return ModelInputs('video', 5, preprocess, tuple(d.mean), tuple(d.std))
