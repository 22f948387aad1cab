"""Find Flax params on disk, and the on-disk layout of imported PyTorch weights.

Imported params (written by `python -m mvm_jax.import_torch --out DIR`):

  DIR/params/       orbax StandardCheckpointer item: {'params': nested Flax params}
                    (float32 numpy leaves, names as `MaskedAutoencoder`,
                    `VideoClassifier` or {'encoder': ...}, see import.json)
  DIR/config.json   the config the params were shaped by (readable by `methods.load_run_config`)
  DIR/import.json   source file, detected format, target model, notes

`load_imported_params(DIR)` returns the params tree (numpy); no PyTorch needed.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from mvm_jax import methods, runs

PARAMS_ITEM = 'params'
INFO_FILE = 'import.json'
CONFIG_FILE = 'config.json'


def save_imported_params(
  directory: str, params: Any, config: ml_collections.ConfigDict | None = None, info: dict | None = None
) -> str:
  """Write params (+ config.json, import.json) under `directory`; returns the params item path."""
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, PARAMS_ITEM)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, {'params': params}, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  if config is not None:
    with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(directory, INFO_FILE), 'w') as f:
    json.dump(info or {}, f, indent=2)
  return path


def is_imported_dir(directory: str) -> bool:
  return os.path.isdir(os.path.join(directory, PARAMS_ITEM)) and os.path.exists(
    os.path.join(directory, INFO_FILE)
  )


def load_imported_params(directory: str) -> dict:
  """Params written by `save_imported_params` (import_torch) as a nested dict of numpy arrays."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if not is_imported_dir(directory):
    raise FileNotFoundError(
      f'{directory} holds no imported params (expected {PARAMS_ITEM}/ and {INFO_FILE} from mvm_jax.import_torch)'
    )
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(os.path.join(directory, PARAMS_ITEM))
  return jax.device_get(restored['params'])


def load_pretrained(path: str) -> tuple[int, dict]:
  """(step, params) from a pre-training workdir or an `mvm_jax.import_torch` output
  directory (step 0). What `config.init_from` points to."""
  path = os.path.abspath(os.path.expanduser(path))
  if is_imported_dir(path):
    return 0, load_imported_params(path)
  return runs.latest_params(path)


def load_params(path: str) -> tuple[dict, ml_collections.ConfigDict | None, str]:
  """Params from a run workdir, one of its step directories, or an imported-params dir.

  Accepts: WORKDIR (newest checkpoint), WORKDIR/checkpoints (newest),
  WORKDIR/checkpoints/STEP (that step), or an import_torch --out DIR.
  Returns (params as numpy, the run's config or None if not found, a description).
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} is not a directory')
  if is_imported_dir(path):
    return load_imported_params(path), _config_or_none(path), f'imported params {path}'
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    step, params = runs.latest_params(path)
    return params, _config_or_none(path), f'{path} at step {step}'
  if os.path.basename(path) == 'checkpoints':
    workdir = os.path.dirname(path)
    step, params = runs.latest_params(workdir)
    return params, _config_or_none(workdir), f'{workdir} at step {step}'
  if os.path.isdir(os.path.join(path, 'state')):
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(os.path.join(path, 'state'))
    workdir = os.path.dirname(os.path.dirname(path))
    return jax.device_get(state['params']), _config_or_none(workdir), f'checkpoint {path}'
  raise FileNotFoundError(
    f'{path}: not a workdir (with checkpoints/), a checkpoint step directory (with state/), '
    'or an import_torch output (with params/)'
  )


def _config_or_none(directory: str) -> ml_collections.ConfigDict | None:
  if not os.path.exists(os.path.join(directory, CONFIG_FILE)):
    return None
  return methods.load_run_config(directory)
