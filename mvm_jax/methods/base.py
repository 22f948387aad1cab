"""What every method gives the shared training loop: `Method`, the `ModelSetup` it builds, and the
config `Section`s its runs carry."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax import config_schema
from mvm_jax import objectives as objectives_lib
from mvm_jax.config_schema import ConfigError, fail
from mvm_jax.objectives import contrastive
from mvm_jax import runs, sharding
from mvm_jax.train.step import ModelInputs


@dataclasses.dataclass(frozen=True)
class Section:
  """A config section a method's runs carry, `config.<name>`.

  defaults: () -> the section with every key at its default (keys documented there).
  validate: config -> None, a ConfigError naming the key of an inconsistent value; it may read
    the other sections (the clip in `config.data`, the model) to check the section against them.
  Both are written side by side, in the module that reads the section.
  """

  name: str
  defaults: Callable[[], ml_collections.ConfigDict]
  validate: Callable[[Any], None]


# Two-view objectives' section (infonce, simsiam, vicreg): MAE (ViC-MAE) and VIMPAC train them.
CONTRASTIVE = Section(
  'contrastive', contrastive.default_contrastive_config, contrastive.validate_contrastive_config
)


@dataclasses.dataclass(frozen=True)
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


@dataclasses.dataclass(frozen=True)
class EncoderInput:
  """What an evaluation (frozen features, probes, fine-tuning) feeds a run's video encoder.

  params_key: the encoder's entry in the run's params ('encoder'; VIMPAC's 'backbone').
  example: one zero input: pixels [1, T, H, W, 3] float32, or tokens [1, T, H', W'] int32.
  tokenizer: the run's frozen tokenizer (`frozen_tokenizer.FrozenTokenizer`), which turns the
    evaluators' pixel clips into the encoder's tokens; None: the encoder reads pixels.
  """

  params_key: str
  example: jax.Array
  tokenizer: Any = None


class Method:
  """One pre-training method: `name` is its `config.model.name`; subclasses build its model.

  Its config (`base_config`, `validate`):
  objectives: the objectives its model's outputs can feed (`config.objectives`).
  default_objectives: {objective: weight} of `base_config()`.
  sections: the config sections every run of the method carries (beside the shared ones of
    `config_schema.base_config`), with their defaults and checks.
  objective_sections: {objective: the section a run carries when it trains that objective}.
  config_file: the config file whose presets start a run (named in errors).
  Its model keys (beside the shared `model.name` and `model.dtype`) are `model_defaults()`.

  What evaluation asks of a run of the method (`mvm_jax.evaluate`, `tools.model_stats`):
  has_video_encoder: its backbone is a video encoder that frozen evaluation and fine-tuning can use
    (`frozen_encoder`, `classifier`, `token_grid`, `feature_width`; without one they raise ConfigError).
    How an evaluation feeds that encoder (pixels, or tokens from the run's tokenizer): `encoder_input`.
  run_sections: the config sections besides `model` that a run brings along when evaluated.
  """

  name: str = ''
  objectives: tuple[str, ...] = ()
  default_objectives: Mapping[str, float] = types.MappingProxyType({})
  sections: tuple[Section, ...] = ()
  objective_sections: Mapping[str, Section] = types.MappingProxyType({})
  config_file: str = ''
  has_video_encoder: bool = False
  run_sections: tuple[str, ...] = ()

  # --- config -----------------------------------------------------------------------------------

  def sections_for(self, objectives) -> tuple[Section, ...]:
    """The sections of a run that trains `objectives`: `sections`, then those its objectives read."""
    out = list(self.sections)
    for name in objectives:
      section = self.objective_sections.get(name)
      if section is not None and section not in out:
        out.append(section)
    return tuple(out)

  def model_defaults(self) -> ml_collections.ConfigDict:
    """The method's own `config.model` keys at their defaults (documented there), beside the shared
    `name` and `dtype`; none by default (a method whose model is configured by its own section)."""
    return ml_collections.ConfigDict()

  def base_config(self, objectives: Mapping[str, float] | None = None) -> ml_collections.ConfigDict:
    """A config of this method at its defaults: the shared keys (`config_schema.base_config`),
    `model.name`, its model keys (`model_defaults`), `objectives` (default `default_objectives`) and
    the sections they need."""
    c = config_schema.base_config()
    c.model.name = self.name
    for key, value in self.model_defaults().items():
      c.model[key] = value
    c.objectives = ml_collections.ConfigDict(
      dict(self.default_objectives if objectives is None else objectives)
    )
    for section in self.sections_for(c.objectives):
      c[section.name] = section.defaults()
    return c

  def run_config(self, saved: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config of a run of this method saved as `saved` (its config.json): `base_config` for the
    objectives it trained, overlaid with every saved value, so that keys added since the run was
    made get their defaults; sections it saved beyond those (a run saved when every config carried
    every section) come along as saved."""
    c = self.base_config(saved.get('objectives') or None)
    runs.overlay(c, dict(saved))
    return c

  def set_objectives(self, config, objectives: Mapping[str, float]) -> None:
    """`config.objectives = objectives`, with the sections that follow: those of the objectives it
    now trains are added at their defaults (kept where present), those of no objective it trains
    are dropped. Works on a locked config (a config file's, or one from the command line)."""
    keep = {s.name for s in self.sections_for(objectives)}
    with config.unlocked():
      for section in self.sections_for(config.objectives):
        if section.name not in keep and section.name in config:
          del config[section.name]
      config.objectives = ml_collections.ConfigDict(dict(objectives))
      for section in self.sections_for(objectives):
        if section.name not in config:
          config[section.name] = section.defaults()

  def validate(self, config, *, pretraining: bool = True) -> None:
    """Raise ConfigError naming the key for an inconsistent value of what this method reads: its
    model keys (`validate_model`) and `sections`; when `pretraining`, also `config.objectives` and
    the sections of those objectives (an evaluation of a run's encoder reads neither)."""
    self.validate_model(config, pretraining=pretraining)
    for section in self.sections:
      if section.name not in config:
        fail(
          section.name,
          f'model.name={self.name!r} needs this section; start from {self.config_file} '
          f'(or methods.base_config({self.name!r}))',
        )
      section.validate(config)
    if not pretraining:
      return
    self.validate_objectives(config)
    for name in config.objectives:
      section = self.objective_sections.get(name)
      if section is None or section in self.sections:
        continue
      if section.name not in config:
        fail(
          section.name,
          f'objectives.{name} needs this section, which this config lacks: start from a preset that '
          f'trains {name} (in Python, methods.set_objectives(config, ...) adds it at its defaults)',
        )
      section.validate(config)

  def validate_model(self, config, *, pretraining: bool) -> None:
    """The method's checks of `config.model` (and of the clip against it); ConfigError naming the key."""
    del config, pretraining

  def validate_objectives(self, config) -> None:
    """`config.objectives`: known names, numeric weights, ones this method can train (an objective
    registered outside `mvm_jax.objectives` is left to its author)."""
    if not config.objectives:
      fail('objectives', 'at least one objective is needed')
    for name, weight in config.objectives.items():
      if name not in objectives_lib.OBJECTIVES:
        fail(f'objectives.{name}', f'unknown objective; known: {sorted(objectives_lib.OBJECTIVES)}')
      if not isinstance(weight, (int, float)):
        fail(f'objectives.{name}', f'weight must be a number, got {weight!r}')
      if name in objectives_lib.BUILT_IN and name not in self.objectives:
        fail(
          f'objectives.{name}',
          f'model.name={self.name!r} cannot train it; its objectives: {list(self.objectives)}',
        )

  # --- training ---------------------------------------------------------------------------------

  def setup(self, config, total_steps: int, steps_per_epoch: int = 1) -> ModelSetup:
    """The model this config trains, what it reads, how its masks are drawn."""
    raise NotImplementedError

  def teacher_momentum(self, config, steps_per_epoch: int) -> Callable | None:
    """step -> momentum of the EMA teacher kept in the state (`state.teacher`), or None: no teacher."""
    del config, steps_per_epoch
    return None

  def objective_start_steps(self, config, steps_per_epoch: int) -> dict[str, int]:
    """{objective: the step before which it weighs 0}: the contrastive objectives it trains start
    after `config.contrastive.start_epoch` epochs (ViC-MAE's schedule)."""
    names = contrastive.contrastive_objectives(config)
    if not names:
      return {}
    start = int(config.contrastive.start_epoch * steps_per_epoch)
    return {name: start for name in names}

  def write_images(self, exp, state, workdir: str, step: int, batch: dict):
    """The pictures of `state` (the `TrainState` at `step` of `exp`, a `loop.Experiment`) from the
    first samples of `batch`, under `workdir`/images. Runs on every process (the global batch and the
    state may span all hosts); only the chief writes the PNGs. Returns their paths on the chief, None
    elsewhere."""
    raise NotImplementedError

  # --- evaluation: the run's video encoder (`has_video_encoder`) ----------------------------------

  def frozen_encoder(self, config) -> nn.Module:
    """The video encoder as frozen evaluation applies it (no drop path, no dropout when deterministic);
    its parameters are the pre-training run's `params[<its module name>]`."""
    raise self._no_video_encoder()

  def classifier(self, config, num_classes: int, *, drop_path_rate=None, dropout: float = 0.0) -> nn.Module:
    """The encoder under a linear head for fine-tuning: [B, *input] → logits [B, num_classes]; it
    shares the encoder's parameters (and their name) with the pre-training model. drop_path_rate None:
    `config.model.drop_path_rate` (an encoder without drop path ignores it)."""
    raise self._no_video_encoder()

  def token_grid(self, config) -> tuple[int, int, int]:
    """(T, H, W) of the encoder's token map for the config's clip: N = T·H·W tokens (besides any [CLS])."""
    raise self._no_video_encoder()

  def feature_width(self, config) -> int:
    """D, the width of the encoder's tokens."""
    raise self._no_video_encoder()

  def encoder_depth(self, config) -> int:
    """The encoder's blocks (fine-tuning's layer-wise lr decay)."""
    raise self._no_video_encoder()

  def token_patch(self, config) -> tuple[int, int, int]:
    """(t, p, p) pixels of the clip behind one token of its encoder (the raw-pixel baseline's patch)."""
    raise self._no_video_encoder()

  def encoder_input(self, config) -> EncoderInput:
    """How evaluation feeds the video encoder: by default the clip's pixels, to `params['encoder']`."""
    if not self.has_video_encoder:
      raise self._no_video_encoder()
    return EncoderInput('encoder', jnp.zeros((1, *video_shape(config), 3), jnp.float32))

  def validate_evaluation_inputs(self, config, key: str) -> None:
    """ConfigError when the run's encoder could not read the evaluators' pixel clips (`key`: the
    config key that asked for the evaluation); nothing to check by default."""
    del config, key

  def _no_video_encoder(self) -> ConfigError:
    return ConfigError(f'config.model.name: a {self.name!r} run has no video encoder')

  # --- tokens: what `tools.extract_tokens` asks of a config ---------------------------------------

  def token_vocab_size(self, config) -> int | None:
    """V, the VQ codes the method's model reads; None: it reads no tokens."""
    del config
    return None

  def extract_resize_short_side(self, config) -> int:
    """The short side `tools.extract_tokens` resizes each frame to before the centre data.crop_size
    crop, from the config's tokenizer; 0: to crop_size (the crop spans the short side)."""
    del config
    return 0

  # --- counting: what `tools.model_stats` asks of a config ----------------------------------------

  def model_stats(self, config, num_classes: int) -> dict:
    """{'params': {part: count}, 'gflops_per_clip': {forward: GFLOPs}} of the method's models on one
    clip, from `jax.eval_shape` and XLA's cost analysis of compiled forwards (2 FLOPs per
    multiply-add); nothing runs. `num_classes`: the fine-tuning head's, where one is counted."""
    del config, num_classes
    raise self._nothing_to_count()

  def model_stats_table(self, stats: dict, config) -> str:
    """`stats` (from `model_stats`) as the table `tools.model_stats` prints."""
    del stats, config
    raise self._nothing_to_count()

  def _nothing_to_count(self) -> ConfigError:
    return ConfigError(f'config.model.name: {self.name!r} has no video encoder to count')


# {config.model.name: its Method}: filled by `register` as `mvm_jax.methods` imports its modules.
METHODS: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: the method `cls` trains the configs with `model.name = cls.name`.

  `mvm_jax.methods` imports every module of its package, so a module there that defines and registers
  a method is all the registry needs: no list of methods to edit.
  """
  if not cls.name or cls.name in METHODS:
    raise ValueError(f'method {cls.__name__}: name {cls.name!r} is empty or taken; taken: {sorted(METHODS)}')
  METHODS[cls.name] = cls()
  return cls


def video_shape(config) -> tuple[int, int, int]:
  """(T, H, W) of the training clip from `config.data`."""
  return (config.data.num_frames, config.data.crop_size, config.data.crop_size)


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
