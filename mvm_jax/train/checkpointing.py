"""Orbax checkpoints of the train state and the data iterator's position."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`, one per saved step.

  Each holds two items: 'state' (the sharded TrainState) and 'data' (the
  input iterator's state as JSON), so a restart continues the same samples.
  """

  def __init__(self, directory: str, *, keep: int, every_steps: int, asynchronous: bool = True):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=asynchronous, create=True
    )
    self.every_steps = every_steps
    self.manager = ocp.CheckpointManager(
      os.path.abspath(directory), options=options, item_names=('state', 'data')
    )

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
    """Save if `step` is a multiple of `every_steps` (or `force`); returns whether it saved."""
    if not force and step % self.every_steps:
      return False
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(encode_data_state(data_state))
    )
    return self.manager.save(step, args=args, force=force)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """→ (state placed by the shardings in `abstract_state`, data iterator state)."""
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
    )
    return restored['state'], decode_data_state(restored['data'])

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def encode_data_state(data_state: Any) -> dict:
  """Grain iterator states are bytes or JSON-able dicts; store either as JSON."""
  if isinstance(data_state, bytes):
    return {'bytes': data_state.decode('utf-8')}
  return {'json': json.dumps(data_state)}


def decode_data_state(stored: dict) -> Any:
  if 'bytes' in stored:
    return stored['bytes'].encode('utf-8')
  return json.loads(stored['json'])
