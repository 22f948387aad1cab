"""Read and write PyTorch state_dicts: `.safetensors` (safetensors) or `.pth` (torch.save).

PyTorch and safetensors are optional dependencies (`pip install 'mvm_jax[torch]'`);
they are imported only here, inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

INSTALL_HINT = "pip install 'mvm_jax[torch]'  (i.e. torch==2.13.0 and safetensors)"
WRAPPER_KEYS = ('model', 'model_state', 'state_dict')  # mae/mae_st ('model'), mae_st ('model_state'), others


def require(module: str):
  """Import an optional dependency or fail with the install command."""
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f'PyTorch export/import needs {module.split(".")[0]}: {INSTALL_HINT} ({e})') from None


def is_safetensors(path: str) -> bool:
  return str(path).endswith('.safetensors')


def save_state_dict(state_dict: Mapping[str, np.ndarray], path: str, wrap_key: str | None = None) -> None:
  """Write {key: array} to `path`: safetensors if it ends in `.safetensors`, else torch.save.

  `wrap_key` (torch.save only) writes {wrap_key: state_dict}, e.g. 'model' for
  mae_st's `--finetune` loader.
  """
  arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
  if is_safetensors(path):
    if wrap_key:
      raise ValueError('safetensors files hold a flat {name: tensor} map; wrap_key applies to .pth only')
    require('safetensors.numpy').save_file(arrays, str(path), metadata={'format': 'pt'})
    return
  torch = require('torch')
  tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
  torch.save({wrap_key: tensors} if wrap_key else tensors, str(path))


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Read a state_dict as {key: numpy array}.

  `.pth` files are read with `torch.load(weights_only=True)`; a wrapper dict
  ({'model': sd}, {'model_state': sd}, {'state_dict': sd}) is unwrapped and a
  DistributedDataParallel 'module.' prefix removed. bfloat16 becomes float32.
  """
  if is_safetensors(path):
    try:
      return dict(require('safetensors.numpy').load_file(str(path)))
    except (TypeError, ValueError):  # dtypes numpy lacks (bfloat16): go through torch
      loaded = require('safetensors.torch').load_file(str(path))
  else:
    torch = require('torch')
    loaded = torch.load(str(path), map_location='cpu', weights_only=True)
    for key in WRAPPER_KEYS:
      if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
        loaded = loaded[key]
        break
  if not isinstance(loaded, Mapping):
    raise TypeError(f'{path}: expected a state_dict (a dict of tensors), got {type(loaded).__name__}')
  tensors = {k: v for k, v in loaded.items() if hasattr(v, 'detach')}
  if tensors and all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.') :]: v for k, v in tensors.items()}
  return {k: _to_numpy(v) for k, v in tensors.items()}


def _to_numpy(tensor) -> np.ndarray:
  tensor = tensor.detach().cpu()
  if str(tensor.dtype) == 'torch.bfloat16':
    tensor = tensor.float()
  return tensor.numpy()
