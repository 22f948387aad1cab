"""Orbax checkpoints of the train state and the data iterator's position.

Faults: a checkpoint is written to a temporary directory and renamed when
complete (orbax), so a process killed mid-write leaves no checkpoint that
looks complete. A complete checkpoint that cannot be read back (truncated,
corrupted) is named in a warning with the reason, set aside as
``<step>.unreadable`` once an older one has been read instead
(:meth:`Checkpointer.restore_latest`). A write that fails (a read-only or full
disk) stops the run with :class:`CheckpointWriteError`, which names the step,
the directory and the cause; the complete checkpoints stay as they are.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

UNREADABLE_SUFFIX = '.unreadable'


class CheckpointError(RuntimeError):
  """Checkpoints exist but none can be read back; the message says which and why."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written; the message names the step, the directory and the cause."""


def _why(error: BaseException, limit: int = 300) -> str:
  """The first line of an error, shortened: '<type>: <message>'."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ''
  text = text.split(' See full TensorStore details')[0]  # then a whole spec follows
  text = text if len(text) <= limit else text[:limit] + '...'
  return f'{type(error).__name__}: {text}'


class Checkpointer:
  """Keeps the last `keep` checkpoints under `directory`, one per saved step.

  Each holds two items: 'state' (the sharded TrainState) and 'data' (the
  input iterator's state as JSON; with several processes, every process's
  state, as each reads its own shard), so a restart continues the same
  samples. `save` and `restore` are collective: call them on every process.
  """

  def __init__(self, directory: str, *, keep: int, every_steps: int, asynchronous: bool = True):
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=1, enable_async_checkpointing=asynchronous, create=True
    )
    self.every_steps = every_steps
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'data'))
    self._writing: Optional[int] = None  # the step of the save that may still be in flight
    self._closed = self._failed = False

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def _write_error(self, step: int, error: BaseException) -> CheckpointWriteError:
    self._failed = True
    self.manager.reload()
    kept = ', '.join(map(str, self.manager.all_steps())) or 'none'
    return CheckpointWriteError(
      f'could not write checkpoint {step} in {self.directory} ({_why(error)}); the complete checkpoints '
      f'(steps: {kept}) are as they were. Make the directory writable (or free space) and rerun the same '
      'command to resume from the latest of them.'
    )

  def _check_writes(self) -> None:
    """Raise CheckpointWriteError for a failed earlier (asynchronous) save."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many types)
      raise self._write_error(self._writing, e) from e

  def due(self, step: int, *, force: bool = False) -> bool:
    """Whether `save(step, ..., force=force)` would write a checkpoint."""
    return force or step % self.every_steps == 0

  def save(self, step: int, state: Any, data_state: Any, *, force: bool = False) -> bool:
    """Save if `step` is a multiple of `every_steps` (or `force`); returns whether it saved."""
    if not self.due(step, force=force):
      return False
    data = encode_data_state(data_state)
    if jax.process_count() > 1:
      data = {'processes': [json.loads(t) for t in _allgather_text(json.dumps(data))]}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
    if self._writing is not None:
      self.wait()  # the previous save first (orbax waits for it anyway): its error is its own
    try:
      saved = self.manager.save(step, args=args, force=force)
    except Exception as e:  # noqa: BLE001
      raise self._write_error(step, e) from e
    self._writing = step
    return saved

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, Any]]:
    """(step, state, data iterator state) of the newest checkpoint that reads back; None when
    there is no checkpoint.

    A checkpoint that cannot be read is named in a warning with the reason and the previous one
    is tried; once one reads, the unreadable newer ones are renamed ``<step>.unreadable`` (kept
    for a look, out of the way of this run's later saves).

    Raises:
      CheckpointError: checkpoints exist, but none reads back (nothing is renamed then).
    """
    failed = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, data = self._read(step, abstract_state)
      except Exception as e:  # noqa: BLE001 (orbax, tensorstore and json raise many types)
        failed.append((step, _why(e)))
        where, why = self.directory, failed[-1][1]
        logging.warning('Checkpoint %d in %s cannot be read (%s); trying the previous one.', step, where, why)
        continue
      if failed:
        self._set_aside([s for s, _ in failed])
        logging.warning(
          'Resuming from checkpoint %d: the newer %s could not be read (set aside as %s).',
          step,
          ', '.join(str(s) for s, _ in failed),
          ', '.join(f'{s}{UNREADABLE_SUFFIX}' for s, _ in failed),
        )
      return step, state, self._data_of_this_process(step, data)
    if failed:
      reasons = '; '.join(f'{s}: {why}' for s, why in failed)
      raise CheckpointError(
        f'no checkpoint in {self.directory} can be read ({reasons}). Nothing was changed; move the '
        'directory away to start from scratch.'
      )
    return None

  def _set_aside(self, steps) -> None:
    """Rename checkpoints ``steps`` to ``<step>.unreadable`` (the chief; every process waits)."""
    if jax.process_index() == 0:
      for step in steps:
        path = os.path.join(self.directory, str(step))
        target = path + UNREADABLE_SUFFIX
        if os.path.exists(target):
          target += f'.{int(time.time())}'
        os.rename(path, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices('checkpoints set aside')
    self.manager.reload()

  def _read(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()),
    )
    return restored['state'], restored['data']

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
    """→ (state placed by the shardings in `abstract_state`, data iterator state)."""
    state, data = self._read(step, abstract_state)
    return state, self._data_of_this_process(step, data)

  def _data_of_this_process(self, step: int, data: dict) -> Any:
    if 'processes' in data or jax.process_count() > 1:
      count = len(data.get('processes', [data]))
      if count != jax.process_count():
        raise ValueError(
          f'checkpoint {step} in {self.manager.directory} holds the data positions of {count} process(es), '
          f'this run has {jax.process_count()}: resume with the same number of processes'
        )
      data = data['processes'][jax.process_index()]
    return decode_data_state(data)

  def wait(self):
    """Wait for the save in flight; CheckpointWriteError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._write_error(self._writing, e) from e
    self._check_writes()

  def close(self):
    """Finish the save in flight (CheckpointWriteError if it failed) and release the manager (once)."""
    if self._closed:
      return
    self._closed = True
    if self._failed:  # already reported: let the error that stops the run stand alone
      try:
        self.manager.close()
      except Exception:  # noqa: BLE001
        pass
      return
    try:
      self.wait()
    finally:
      self.manager.close()


def encode_data_state(data_state: Any) -> dict:
  """Grain iterator states are bytes or JSON-able dicts; store either as JSON."""
  if isinstance(data_state, bytes):
    return {'bytes': data_state.decode('utf-8')}
  return {'json': json.dumps(data_state)}


def _allgather_text(text: str) -> list[str]:
  """Every process's `text`, in process order (a collective)."""
  from jax.experimental import multihost_utils

  data = np.frombuffer(text.encode('utf-8'), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(len(data)))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[: len(data)] = data
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [bytes(row[:length]).decode('utf-8') for row, length in zip(rows, lengths)]


def decode_data_state(stored: dict) -> Any:
  if 'bytes' in stored:
    return stored['bytes'].encode('utf-8')
  return json.loads(stored['json'])
