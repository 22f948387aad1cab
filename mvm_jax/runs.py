"""Read back what a pre-training run left in its workdir (config, params, curves)."""

from __future__ import annotations

import glob
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp


def saved_config(workdir: str) -> dict:
  """The config the run wrote to `workdir/config.json`, as saved (a dict). `methods.load_run_config`
  reads it over today's defaults of the run's method: the config to rebuild the run's model with."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir!r} a mvm_jax workdir?')
  with open(path) as f:
    return json.load(f)


def overlay(config: ml_collections.ConfigDict, saved: dict) -> None:
  """Set every key of `saved` (nested dicts) in `config` (unlocked): keys `config` lacks are added,
  its other keys keep their values; `objectives` is replaced as a whole."""
  for key, value in saved.items():
    if (
      isinstance(value, dict)
      and isinstance(config.get(key), ml_collections.ConfigDict)
      and key != 'objectives'
    ):
      overlay(config[key], value)
    else:
      config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value


def latest_params(workdir: str) -> tuple[int, dict]:
  """(step, params as numpy arrays) of the newest checkpoint in `workdir/checkpoints`.

  Reads the parameters only (a partial restore, straight into host memory):
  the optimizer moments, rng and any other part of the saved train state stay
  on disk, and no device memory is used.

  Raises:
    FileNotFoundError: no checkpoint under `workdir/checkpoints`.
    ValueError: the newest checkpoint's state has no `params`.
  """
  step, items = latest_state_items(workdir, ('params',))
  return step, items['params']


def latest_state_items(workdir: str, keys) -> tuple[int, dict]:
  """(step, {key: tree of numpy arrays}) for the TrainState fields `keys` (e.g.
  ('params', 'model_state')) of the newest checkpoint, as `latest_params`
  reads params. A key the state lacks raises ValueError naming the checkpoint;
  an empty field (e.g. no model_state) comes back as {}."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  with ocp.CheckpointManager(
    directory,
    item_names=('state', 'data'),
    item_handlers={'state': ocp.PyTreeCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()},
  ) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint under {directory}')
    saved = manager.item_metadata(step)['state'].tree
    for key in keys:
      if key not in saved and key != 'model_state':
        raise ValueError(f'checkpoint {directory}/{step} holds no {key} (state keys: {sorted(saved)})')
    wanted = [k for k in keys if saved.get(k)]
    item = {k: jax.tree.map(lambda _: 0, saved[k]) for k in wanted}  # the structure to restore
    restore_args = {
      k: jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved[k]) for k in wanted
    }
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
      ),
    )
  return step, {k: restored['state'].get(k, {}) for k in keys}


def scalar_curves(workdir: str) -> dict[str, tuple[list[int], list[float]]]:
  """TensorBoard scalars of the run: {tag: (steps, values)}."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util

  curves: dict[str, tuple[list[int], list[float]]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    acc = event_accumulator.EventAccumulator(path, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    for tag in acc.Tags().get('tensors', []):
      for event in acc.Tensors(tag):
        value = tensor_util.make_ndarray(event.tensor_proto)
        if value.size == 1 and value.dtype.kind == 'f':
          steps, values = curves.setdefault(tag, ([], []))
          steps.append(event.step)
          values.append(float(value))
  return curves
