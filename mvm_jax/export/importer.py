"""PyTorch state_dict + our config → Flax params of the model the config builds.

Targets (`model`):
  mae         `MaskedAutoencoder` params (encoder + decoder) of the config's MAE method
              (`MaeMethod.model`); from mae_st or image-MAE pre-training checkpoints.
  encoder     {'encoder': ...} only; from any format (a decoder, `head` and
              `fc_norm` in the state_dict are skipped and reported).
  classifier  `VideoClassifier` params (encoder + head, classes from head.weight),
              e.g. from a fine-tuned mae_st `VisionTransformer`.
  auto        mae if the state_dict has a decoder; classifier if it has `head.weight`;
              encoder otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mvm_jax.export import convert, names

MODELS = ('auto', 'mae', 'encoder', 'classifier')
DECODER_PREFIXES = ('decoder_', 'mask_token')
HEAD_PREFIXES = ('head.', 'fc_norm.')


def token_grid(config) -> tuple[int, int, int]:
  """(T', H', W') of the config's clips and patches."""
  from mvm_jax.methods import mae

  return mae.patch_grid(config)


def target_params(config, model: str, num_classes: int | None = None) -> Any:
  """Abstract params (ShapeDtypeStructs) of `model` built from `config`; nothing is computed."""
  from mvm_jax import masking, methods
  from mvm_jax.methods import mae, video_shape

  video = jnp.zeros((1,) + video_shape(config) + (3,), jnp.float32)
  rng = jax.random.PRNGKey(0)
  if model == 'mae':
    method = methods.get(config)
    if not isinstance(method, mae.MaeMethod):
      raise ValueError(
        f'config.model.name={method.name!r}: the {model!r} target is the MaskedAutoencoder of a pixel '
        'MAE method ("mae" or one built on it)'
      )
    module = method.model(config)  # the method's own MaskedAutoencoder (mae_motion: its target)
    masker = masking.make_masker(config.masking.kind, module.encoder.grid, config.masking.ratio)
    init = lambda: module.init(rng, video, masker(rng, 1))
  elif model == 'encoder':
    module = mae.encoder(config)
    init = lambda: {'params': {'encoder': module.init(rng, video)['params']}}
  elif model == 'classifier':
    if not num_classes:
      raise ValueError('a classifier target needs num_classes (taken from head.weight)')
    module = mae.video_classifier(config, num_classes)
    init = lambda: module.init(rng, video)
  else:
    raise ValueError(f'unknown target model {model!r}; known: {list(MODELS)}')
  return jax.eval_shape(lambda: nn.unbox(init())['params'])


def resolve_model(state_dict: Mapping[str, Any], model: str = 'auto') -> str:
  if model != 'auto':
    return model
  keys = set(state_dict)
  if any(k.startswith(DECODER_PREFIXES) for k in keys):
    return 'mae'
  if 'head.weight' in keys:
    return 'classifier'
  return 'encoder'


def import_state_dict(
  state_dict: Mapping[str, np.ndarray], config, model: str = 'auto', fmt: str = 'auto'
) -> tuple[dict, dict]:
  """→ (Flax params of `model` shaped by `config`, info dict: format, model, notes).

  Raises:
    convert.StateDictMismatch: missing, unexpected or mis-shaped keys (all listed).
    ValueError: unknown model/format, or a layout the config cannot hold
      (e.g. a 2-D patch embedding into model.t_patch_size > 1).
  """
  fmt = names.detect_format(state_dict) if fmt == 'auto' else fmt
  if fmt not in names.FORMATS:
    raise ValueError(f'unknown format {fmt!r}; known: {list(names.FORMATS)}')
  model = resolve_model(state_dict, model)
  num_classes = int(np.shape(state_dict['head.weight'])[0]) if 'head.weight' in state_dict else None
  if model == 'mae' and fmt not in names.PRETRAIN_FORMATS:
    fmt = {'mae_st_vit': 'mae_st', 'timm': 'mae'}[fmt]  # let the missing decoder keys be reported
  if model != 'mae' and fmt in names.PRETRAIN_FORMATS:
    fmt = {'mae_st': 'mae_st_vit', 'mae': 'timm'}[fmt]
  ignore = DECODER_PREFIXES if model != 'mae' else ()
  if model == 'encoder':
    ignore += HEAD_PREFIXES
  target = target_params(config, model, num_classes)
  params, notes = convert.from_state_dict(state_dict, target, fmt, token_grid(config), ignore)
  return params, {'format': fmt, 'model': model, 'num_classes': num_classes, 'notes': notes}
