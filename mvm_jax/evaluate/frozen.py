"""The frozen encoder an evaluation reads features from: its config and parameters.

With ``config.init_from`` = a pre-training workdir, ``config.model`` and the
clip keys of ``config.data`` (:data:`CLIP_KEYS`) come from that run's
``config.json`` and the encoder's parameters from its latest checkpoint;
everything else (data source and loader settings, mesh, seed, the evaluator's
own section) comes from the evaluation config. With ``init_from=''`` the
encoder is randomly initialised (seed ``config.seed``) in the shape that
``config.model`` gives: the baseline a pre-trained encoder should beat.
With ``init_from='random:RUN'`` it is randomly initialised too, but with the
model and clip keys of the pre-training run in RUN, as ``init_from=RUN``
takes them: the baseline that compares like with like.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mvm_jax import config_schema, methods
from mvm_jax.export import checkpoints
from mvm_jax.models import vit
from mvm_jax import sharding
from mvm_jax.train import state as state_lib

# config.data keys that must match pre-training: the token grid (and so the
# learned position embeddings) and the input statistics the encoder saw.
CLIP_KEYS = ('num_frames', 'crop_size', 'sampling_rate', 'mean', 'std')
# init_from='random:RUN': random init with the model and clip keys of the run in RUN.
RANDOM_LIKE = 'random:'


def settings_run(init_from: str) -> str:
  """The run whose model and clip settings ``init_from`` takes ('' for none): RUN of 'RUN' or 'random:RUN'."""
  return init_from[len(RANDOM_LIKE) :] if init_from.startswith(RANDOM_LIKE) else init_from


def pretrained_run(init_from: str) -> str:
  """The run whose weights ``init_from`` loads: '' for '' and for 'random:RUN'."""
  return '' if init_from.startswith(RANDOM_LIKE) else init_from


@dataclasses.dataclass(frozen=True)
class TokenFeatureEncoder:
  """A VIMPAC backbone as the evaluations see an encoder: pixels → frozen tokenizer → backbone.

  `apply({'params': {'backbone': ..., 'tokenizer': ...}}, video [B, T, H, W, 3])`
  returns [B, 1 + N, D], the backbone's [CLS] first then its N = T·h·w token
  outputs (post-LN backbone: no final norm); `pool='mean'` gives [B, D], their mean.
  """

  backbone: Any  # factorized.FactorizedEncoder
  tokenizer: Any  # frozen_tokenizer.FrozenTokenizer

  def apply(self, variables, video, pool=None):
    params = variables['params']
    codes = self.tokenizer.tokenize(params['tokenizer'], video)
    cls, x = self.backbone.apply({'params': params['backbone']}, codes)
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    if pool == 'mean':
      return jnp.mean(x, axis=1)
    if pool is not None:
      raise ValueError(f'pool must be None or "mean", got {pool!r}')
    return jnp.concatenate([cls[:, None], x], axis=1)


@dataclasses.dataclass(frozen=True)
class PixelFeatureEncoder:
  """Raw pixels as the evaluations see an encoder (the raw-pixel baseline): no parameters.

  `apply({'params': {}}, video [B, T, H, W, 3])` returns the flattened t×p×p×3
  patch vectors [B, N, t·p·p·3] (ordered as `vit.patchify`); `pool='mean'` gives
  [B, t·p·p·3], their mean over the N spacetime patches.
  """

  patch: tuple[int, int, int]
  prefix_tokens = 0  # no [CLS] before the patch tokens (the ViT encoders have 1)

  def apply(self, variables, video, pool=None):
    del variables
    patches = vit.patchify(video.astype(jnp.float32), self.patch)
    if pool == 'mean':
      return jnp.mean(patches, axis=1)
    if pool is not None:
      raise ValueError(f'pool must be None or "mean", got {pool!r}')
    return patches


@dataclasses.dataclass
class FrozenEncoder:
  """An encoder with parameters placed on a mesh, and where they came from.

  Attributes:
    config: the resolved config (model and clip keys from ``init_from``'s run).
    encoder: the ViT encoder (or a VIMPAC run's `TokenFeatureEncoder`):
      video [B, T, H, W, 3] → tokens [B, 1+N, D], [CLS] first.
    params: its parameters, sharded over ``mesh`` by logical axis names.
    param_shardings: the NamedSharding of each parameter.
    mesh: the device mesh from ``config.mesh``.
    step: the checkpoint's step; 0 for a random initialisation.
    init_from: absolute path of the pre-training workdir; '' for random init, 'random:RUN'
      (RUN absolute) for random init with RUN's model and clip settings.
    description: what `describe` says instead, when set (e.g. the running
      pre-training's encoder, or the raw-pixel baseline).
  """

  config: ml_collections.ConfigDict
  encoder: Any
  params: Any
  param_shardings: Any
  mesh: Any
  step: int
  init_from: str
  description: str = ''

  def describe(self) -> str:
    if self.description:
      return self.description
    if self.init_from.startswith(RANDOM_LIKE):
      return f'random init (seed {self.config.seed}) with the settings of {settings_run(self.init_from)}'
    if self.init_from:
      return f'init_from={self.init_from}, step {self.step}'
    return f"init_from='' (random init, seed {self.config.seed})"


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose model and clip keys come from ``config.init_from``'s run
  (RUN of ``init_from='random:RUN'`` too); ``init_from`` made absolute.

  Raises:
    FileNotFoundError: ``init_from`` is not a workdir with a ``config.json``.
  """
  resolved = copy.deepcopy(config)
  resolved.unlock()
  run_dir = settings_run(config.init_from)
  if not run_dir:
    if config.init_from:
      raise config_schema.ConfigError("config.init_from: 'random:' needs the run to copy: 'random:RUN'")
    return resolved
  run_dir = os.path.abspath(os.path.expanduser(run_dir))
  resolved.init_from = RANDOM_LIKE + run_dir if config.init_from.startswith(RANDOM_LIKE) else run_dir
  run = methods.load_run_config(run_dir)
  resolved.model = run.model
  for key in methods.get(run).run_sections:  # e.g. VIMPAC's backbone and the tokenizer of its input
    resolved[key] = run[key]
  for key in CLIP_KEYS:
    resolved.data[key] = run.data[key]
  ours, theirs = (
    traverse_util.flatten_dict({'model': c.model.to_dict(), 'data': c.data.to_dict()}, sep='.')
    for c in (config, resolved)
  )
  changed = [f'{k}={v!r}' for k, v in theirs.items() if k in ours and ours[k] != v]
  if changed:
    logging.info('From %s/config.json (over this config): %s', run_dir, ', '.join(changed))
  return resolved


def pick_params(params: dict, like: dict, path: str = 'encoder') -> dict:
  """The sub-tree of checkpoint ``params`` with the structure of ``like``
  (drops e.g. the dense encoder's unused ``mask_token``); checks shapes."""
  out = {}
  for key, target in like.items():
    if key not in params:
      raise ValueError(f'checkpoint has no parameter {path}/{key}; is it from a different model?')
    if isinstance(target, dict):
      out[key] = pick_params(params[key], target, f'{path}/{key}')
    elif tuple(params[key].shape) != tuple(target.shape):
      raise ValueError(
        f'checkpoint parameter {path}/{key} has shape {tuple(params[key].shape)}, the encoder '
        f'built from the run config expects {tuple(target.shape)}'
      )
    else:
      out[key] = params[key]
  return out


@dataclasses.dataclass
class EncoderTemplate:
  """An evaluated encoder built from a resolved config and placed on a mesh, before its parameters.

  `with_params` wraps parameters of the pre-training model (a checkpoint's, or
  a running pre-training's current ones), `random_init` makes fresh ones.

  Attributes:
    config: the resolved config.
    encoder: as `FrozenEncoder.encoder`.
    mesh: the device mesh.
    abstract: the trainable parameters' shapes (unboxed `jax.ShapeDtypeStruct` tree).
    shardings: NamedSharding of each trainable parameter.
    key: where those parameters sit in the pre-training model's params
      ('encoder' for MAE, 'backbone' for VIMPAC).
    init: rng → boxed trainable parameters.
    fixed: parameters that are never trained (VIMPAC's tokenizer variables,
      placed), merged in as `{key: ..., 'tokenizer': fixed}`; None for a ViT.
    fixed_shardings: their shardings.
  """

  config: ml_collections.ConfigDict
  encoder: Any
  mesh: Any
  abstract: Any
  shardings: Any
  key: str
  init: Any
  fixed: Any = None
  fixed_shardings: Any = None

  def _frozen(self, trainable, step: int, init_from: str, description: str = '') -> FrozenEncoder:
    params, shardings = trainable, self.shardings
    if self.fixed is not None:
      params = {self.key: trainable, 'tokenizer': self.fixed}
      shardings = {self.key: self.shardings, 'tokenizer': self.fixed_shardings}
    return FrozenEncoder(
      self.config, self.encoder, params, shardings, self.mesh, int(step), init_from, description
    )

  def with_params(self, params: dict, step: int, init_from: str, description: str = '') -> FrozenEncoder:
    """Around the pre-training model's ``params`` (their ``key`` sub-tree, placed as
    ``shardings``; a no-op for arrays already placed so)."""
    if self.key not in params:
      raise ValueError(f'the parameters have no {self.key!r} sub-tree (keys: {sorted(params)})')
    picked = pick_params(params[self.key], self.abstract, self.key)
    with sharding.sharding_context(self.mesh, self.config.mesh.rules):
      trainable = jax.device_put(picked, self.shardings)
    return self._frozen(trainable, step, init_from, description)

  def random_init(self, seed: int, description: str = '') -> FrozenEncoder:
    """Freshly initialised parameters from ``PRNGKey(seed)``, step 0, ``init_from=''``."""
    rng = jax.random.PRNGKey(seed)
    with sharding.sharding_context(self.mesh, self.config.mesh.rules):
      init_fn = jax.jit(lambda r: nn.unbox(self.init(r)), out_shardings=self.shardings)
      # Run once: on CPU, XLA's backend optimisation would take most of the
      # (many seconds of) compile time of the random-number code.
      cpu = self.mesh.devices.flat[0].platform == 'cpu'
      trainable = init_fn.lower(rng).compile({'xla_backend_optimization_level': 0} if cpu else None)(rng)
    return self._frozen(trainable, 0, '', description)


def video_encoder_method(config: ml_collections.ConfigDict, key: str = 'init_from') -> methods.Method:
  """The method of ``config`` (``config.model.name``), whose video encoder an evaluation reads.

  Raises:
    mvm_jax.config.ConfigError: naming ``config.<key>`` (the run evaluated, or the evaluators asked
      for), when the method has no video encoder (a VQ-VAE run).
  """
  method = methods.get(config)
  if not method.has_video_encoder:
    raise config_schema.ConfigError(
      f'config.{key}: a {config.model.name!r} run has no video encoder to evaluate'
    )
  return method


def template(resolved: ml_collections.ConfigDict, mesh) -> EncoderTemplate:
  """The encoder ``resolved.model`` describes (no drop path), on ``mesh``.

  Raises:
    mvm_jax.config.ConfigError: the model has no video encoder (a VQ-VAE run).
  """
  method = video_encoder_method(resolved)
  encoder_input = method.encoder_input(resolved)
  encoder = method.frozen_encoder(resolved)
  init = lambda r: encoder.init(r, encoder_input.example)['params']
  rules = resolved.mesh.rules
  with sharding.sharding_context(mesh, rules):
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = sharding.logical_to_sharding(boxed, mesh, rules)
  params = state_lib.strip_boxes(boxed)
  tok = encoder_input.tokenizer
  if tok is None:
    return EncoderTemplate(resolved, encoder, mesh, params, shardings, encoder_input.params_key, init)
  # The tokenizer's variables: fixed, replicated, beside the encoder's.
  tok_shardings = jax.tree.map(lambda _: sharding.replicated(mesh), tok.variables)
  return EncoderTemplate(
    resolved,
    TokenFeatureEncoder(encoder, tok),
    mesh,
    params,
    shardings,
    encoder_input.params_key,
    init,
    fixed=jax.device_put(tok.variables, tok_shardings),
    fixed_shardings=tok_shardings,
  )


def load(config: ml_collections.ConfigDict, devices=None) -> FrozenEncoder:
  """Resolve the config, build the encoder and place its parameters on the mesh.

  Raises:
    mvm_jax.config.ConfigError: an invalid model / data / mesh value.
    FileNotFoundError: ``init_from`` has no config.json or no checkpoint.
  """
  resolved = resolve_config(config)
  methods.validate(resolved, pretraining=False)
  mesh = sharding.make_mesh(resolved.mesh, devices)
  t = template(resolved, mesh)
  if pretrained_run(resolved.init_from):
    step, params = checkpoints.load_pretrained(resolved.init_from)
    frozen = t.with_params(params, int(step), resolved.init_from)
  else:
    frozen = t.random_init(resolved.seed)
    frozen.init_from = resolved.init_from  # '' or 'random:RUN'
  if t.fixed is None:
    logging.info('Frozen encoder: %s; mesh %s.', frozen.describe(), dict(mesh.shape))
  else:
    logging.info(
      'Frozen VIMPAC backbone: %s, tokens by %s; mesh %s.',
      frozen.describe(),
      t.encoder.tokenizer.description,
      dict(mesh.shape),
    )
  return frozen


def raw_pixels(resolved: ml_collections.ConfigDict, mesh) -> FrozenEncoder:
  """The raw-pixel baseline as a `FrozenEncoder` (pool 'mean' only): per clip, the mean
  over its spacetime patches of the normalized patch vector, t·p·p·3 values; patches
  of the model's (t, p, p) (VIMPAC: one frame × its tokenizer's downsampling)."""
  patch = methods.get(resolved).token_patch(resolved)
  description = f'raw pixels (mean {patch[0]}×{patch[1]}×{patch[2]} patch)'
  return FrozenEncoder(resolved, PixelFeatureEncoder(patch), {}, {}, mesh, 0, '', description)
