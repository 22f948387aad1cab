"""What every method gives the shared training loop: `Method`, and the `ModelSetup` it builds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from mvm_jax.models import heads
from mvm_jax import sharding
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
  """One pre-training method: `name` is its `config.model.name`; subclasses build its model.

  What evaluation asks of a run of the method (`mvm_jax.evaluate`, `tools.model_stats`):
  has_video_encoder: its backbone is a video encoder that frozen evaluation and fine-tuning can use.
  uses_tokens: that backbone reads VQ tokens, made from pixels by the run's frozen tokenizer.
  run_sections: the config sections besides `model` that a run brings along when evaluated.
  """

  name: str = ''
  has_video_encoder: bool = False
  uses_tokens: bool = False
  run_sections: tuple[str, ...] = ()

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    """The model this config trains, what it reads, how its masks are drawn."""
    raise NotImplementedError

  def teacher_momentum(self, config, steps_per_epoch: int) -> Callable | None:
    """step -> momentum of the EMA teacher kept in the state (`state.teacher`), or None: no teacher."""
    del config, steps_per_epoch
    return None

  def objective_start_steps(self, config, steps_per_epoch: int) -> dict[str, int]:
    """{objective: the step before which it weighs 0}: the contrastive objectives start after
    `config.contrastive.start_epoch` epochs (ViC-MAE's schedule)."""
    start = int(config.contrastive.start_epoch * steps_per_epoch)
    return {name: start for name in heads.CONTRASTIVE_OBJECTIVES}

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """The pictures of `state` (the `TrainState` at `step` of `exp`, a `loop.Experiment`) from the
    first samples of `batch`, under `workdir`/images. Runs on every process (the global batch and the
    state may span all hosts); only the chief writes the PNGs. Returns their paths on the chief, None
    elsewhere."""
    raise NotImplementedError


def pixel_inputs(config, preprocess=None) -> ModelInputs:
  """The batch's 'video' pixels (uint8, normalised in the step with config.data.mean / std)."""
  d = config.data
  return ModelInputs('video', 5, preprocess, tuple(d.mean), tuple(d.std))


def first_samples(exp, x, n: int, batch_ndim: int):
  """The first `n` samples of the global batch array `x` (rank `batch_ndim`, or one more for
  [B, V, ...] view pairs: their first view), uint8 pixels normalised, replicated on every device
  so that every process can read them (a collective: call on all)."""
  normalize = exp.inputs.normalize if exp.inputs is not None else (lambda x: x)

  def take(x):
    return normalize((x[:, 0] if x.ndim == batch_ndim + 1 else x)[:n])

  with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
    return replicated_jit(exp, take)(x)


def replicated_jit(exp, fn):
  """jit `fn` with replicated outputs: the picture forwards, read back on every process."""
  return jax.jit(fn, out_shardings=sharding.replicated(exp.mesh))
