"""The frozen encoder an evaluation reads features from: its config and parameters.

With ``config.init_from`` = a pre-training workdir, ``config.model`` and the
clip keys of ``config.data`` (:data:`CLIP_KEYS`) come from that run's
``config.json`` and the encoder's parameters from its latest checkpoint;
everything else (data source and loader settings, mesh, seed, the evaluator's
own section) comes from the evaluation config. With ``init_from=''`` the
encoder is randomly initialised (seed ``config.seed``) in the shape that
``config.model`` gives: the baseline a pre-trained encoder should beat.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from mvm_jax import config as config_lib
from mvm_jax import runs
from mvm_jax.models import mae as mae_lib
from mvm_jax.models import vit
from mvm_jax.train import partitioning

# config.data keys that must match pre-training: the token grid (and so the
# learned position embeddings) and the input statistics the encoder saw.
CLIP_KEYS = ('num_frames', 'crop_size', 'sampling_rate', 'mean', 'std')
# Sections a VIMPAC run brings along (its backbone and the tokenizer that makes its input).
VIMPAC_SECTIONS = ('vimpac', 'tokenizer', 'masking')


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
    init_from: absolute path of the pre-training workdir; '' for random init.
  """

  config: ml_collections.ConfigDict
  encoder: Any
  params: Any
  param_shardings: Any
  mesh: Any
  step: int
  init_from: str

  def describe(self) -> str:
    if self.init_from:
      return f'init_from={self.init_from}, step {self.step}'
    return f"init_from='' (random init, seed {self.config.seed})"


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = tuple(value) if isinstance(value, list) else value
  return out


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose model and clip keys come from ``config.init_from``'s run.

  Raises:
    FileNotFoundError: ``init_from`` is not a workdir with a ``config.json``.
  """
  resolved = copy.deepcopy(config)
  resolved.unlock()
  if not config.init_from:
    return resolved
  resolved.init_from = os.path.abspath(os.path.expanduser(config.init_from))
  run = runs.load_config(resolved.init_from)
  resolved.model = run.model
  if run.model.name == 'vimpac':
    for key in VIMPAC_SECTIONS:
      resolved[key] = run[key]
  for key in CLIP_KEYS:
    resolved.data[key] = run.data[key]
  ours = _flat({'model': config.model.to_dict(), 'data': config.data.to_dict()})
  theirs = _flat({'model': resolved.model.to_dict(), 'data': resolved.data.to_dict()})
  changed = [f'{k}={v!r}' for k, v in theirs.items() if k in ours and ours[k] != v]
  if changed:
    logging.info('From %s/config.json (over this config): %s', resolved.init_from, ', '.join(changed))
  return resolved


def _unbox(tree):
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def _pick(params: dict, like: dict, path: str = 'encoder') -> dict:
  """The sub-tree of checkpoint ``params`` with the structure of ``like``
  (drops e.g. the dense encoder's unused ``mask_token``); checks shapes."""
  out = {}
  for key, target in like.items():
    if key not in params:
      raise ValueError(f'checkpoint has no parameter {path}/{key}; is it from a different model?')
    if isinstance(target, dict):
      out[key] = _pick(params[key], target, f'{path}/{key}')
    elif tuple(params[key].shape) != tuple(target.shape):
      raise ValueError(
        f'checkpoint parameter {path}/{key} has shape {tuple(params[key].shape)}, the encoder '
        f'built from the run config expects {tuple(target.shape)}'
      )
    else:
      out[key] = params[key]
  return out


def load(config: ml_collections.ConfigDict, devices=None) -> FrozenEncoder:
  """Resolve the config, build the encoder and place its parameters on the mesh.

  Raises:
    mvm_jax.config.ConfigError: an invalid model / data / mesh value.
    FileNotFoundError: ``init_from`` has no config.json or no checkpoint.
  """
  resolved = resolve_config(config)
  config_lib.validate(resolved, pretraining=False)
  mesh = partitioning.make_mesh(resolved.mesh, devices)
  if resolved.model.name == 'vimpac':
    return _load_vimpac(resolved, mesh)
  if resolved.model.name != 'mae':
    raise config_lib.ConfigError(
      f'config.init_from: a {resolved.model.name!r} run has no video encoder to evaluate'
    )
  video_shape = mae_lib.video_shape(resolved)
  encoder = vit.encoder_from_config(resolved.model, video_shape, drop_path_rate=0.0)
  rng = jax.random.PRNGKey(resolved.seed)
  example = jnp.zeros((1, *video_shape, 3), jnp.float32)
  init = lambda r: encoder.init(r, example)['params']
  with partitioning.sharding_context(mesh):
    boxed = jax.eval_shape(init, rng)
    shardings = partitioning.logical_to_sharding(boxed, mesh)
    if resolved.init_from:
      step, params = runs.load_pretrained(resolved.init_from)
      params = jax.device_put(_pick(params['encoder'], _unbox(boxed)), shardings)
    else:
      step = 0
      init_fn = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)
      # Run once: on CPU, XLA's backend optimisation would take most of the
      # (many seconds of) compile time of the random-number code.
      cpu = mesh.devices.flat[0].platform == 'cpu'
      params = init_fn.lower(rng).compile({'xla_backend_optimization_level': 0} if cpu else None)(rng)
  frozen = FrozenEncoder(resolved, encoder, params, shardings, mesh, int(step), resolved.init_from)
  logging.info('Frozen encoder: %s; mesh %s.', frozen.describe(), dict(mesh.shape))
  return frozen


def _load_vimpac(resolved, mesh) -> FrozenEncoder:
  """The backbone of a VIMPAC run behind the run's frozen tokenizer (`config.tokenizer`)."""
  from mvm_jax import frozen_tokenizer
  from mvm_jax.models import factorized

  tok = frozen_tokenizer.load_frozen_tokenizer(resolved)
  backbone = factorized.backbone_from_config(resolved)
  tokens = jnp.zeros((1,) + factorized.token_shape_from_config(resolved), jnp.int32)
  rng = jax.random.PRNGKey(resolved.seed)
  init = lambda r: backbone.init(r, tokens)['params']
  with partitioning.sharding_context(mesh):
    boxed = jax.eval_shape(init, rng)
    backbone_shardings = partitioning.logical_to_sharding(boxed, mesh)
    if resolved.init_from:
      step, params = runs.load_pretrained(resolved.init_from)
      backbone_params = jax.device_put(
        _pick(params['backbone'], _unbox(boxed), 'backbone'), backbone_shardings
      )
    else:
      step = 0
      backbone_params = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=backbone_shardings)(rng)
  replicated = partitioning.replicated(mesh)
  tok_shardings = jax.tree.map(lambda _: replicated, tok.variables)
  params = {'backbone': backbone_params, 'tokenizer': jax.device_put(tok.variables, tok_shardings)}
  shardings = {'backbone': backbone_shardings, 'tokenizer': tok_shardings}
  encoder = TokenFeatureEncoder(backbone, tok)
  frozen = FrozenEncoder(resolved, encoder, params, shardings, mesh, int(step), resolved.init_from)
  logging.info(
    'Frozen VIMPAC backbone: %s, tokens by %s; mesh %s.', frozen.describe(), tok.description, dict(mesh.shape)
  )
  return frozen
