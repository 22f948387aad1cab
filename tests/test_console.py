"""--distributed: coordinator, process count and id from flags or the documented environment variables."""

import types

import jax
import pytest
from absl import app

from mvm_jax import console

UNSET = {'coordinator_address': None, 'num_processes': None, 'process_id': None}
ENV = {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234', 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'}


def test_environment_variables_are_read_and_typed():
  assert console.distributed_args(UNSET, ENV) == {
    'coordinator_address': '127.0.0.1:1234',
    'num_processes': 2,
    'process_id': 1,
  }


def test_flags_win_over_the_environment_and_unset_ones_are_left_out():
  args = console.distributed_args(
    dict(UNSET, process_id=0), {'JAX_PROCESS_ID': '1', 'JAX_NUM_PROCESSES': ' '}
  )
  assert args == {'process_id': 0}  # left to JAX's cluster detection: coordinator and count


def test_a_variable_that_is_not_an_integer_is_named():
  with pytest.raises(app.UsageError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    console.distributed_args(UNSET, dict(ENV, JAX_NUM_PROCESSES='two'))


def _flags(distributed=True, **values):
  return types.SimpleNamespace(distributed=distributed, **dict(UNSET, **values))


def test_initialize_passes_the_values_on(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  console.initialize_distributed(_flags(), ENV)
  console.initialize_distributed(_flags(distributed=False), ENV)  # off: no call
  console.initialize_distributed(_flags(distributed=False, num_processes=4), ENV)  # a setting turns it on
  assert calls == [
    {'coordinator_address': '127.0.0.1:1234', 'num_processes': 2, 'process_id': 1},
    {'coordinator_address': '127.0.0.1:1234', 'num_processes': 4, 'process_id': 1},
  ]


def test_missing_settings_are_a_one_line_usage_error(monkeypatch):
  def initialize(**kw):  # what jax 0.10.2 says when only the coordinator is known and no cluster is detected
    raise ValueError('Number of processes must be defined.')

  monkeypatch.setattr(jax.distributed, 'initialize', initialize)
  with pytest.raises(app.UsageError) as e:
    console.initialize_distributed(_flags(), {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1234'})
  message = str(e.value)
  assert 'JAX_NUM_PROCESSES (or --num_processes)' in message and 'JAX_PROCESS_ID' in message
  assert 'JAX_COORDINATOR_ADDRESS' not in message and '\n' not in message
