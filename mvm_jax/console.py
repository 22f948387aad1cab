"""Console logging shared by the entry points."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Mapping, Optional

from absl import app, flags, logging

from mvm_jax import host_malloc

# jax.distributed.initialize() argument -> (environment variable, type). jax 0.10 reads only the first.
DISTRIBUTED_ENV = {
  'coordinator_address': ('JAX_COORDINATOR_ADDRESS', str),
  'num_processes': ('JAX_NUM_PROCESSES', int),
  'process_id': ('JAX_PROCESS_ID', int),
}


class _QuietLibraries:
  """Drop INFO chatter of checkpointing and data internals; warnings and errors still show."""

  NOISY = ('/orbax/', '/etils/', '/grain/')

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not any(n in record.pathname for n in self.NOISY)


def quiet_library_logs() -> None:
  """Keep the console to our progress lines: hide INFO logs of orbax, etils and grain."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def log_runtime() -> None:
  """One line: JAX version, devices, this process's place among the hosts, the host allocator."""
  import jax

  logging.info(
    'JAX %s on %d %s device(s), process %d of %d; host malloc: %s.',
    jax.__version__,
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_index(),
    jax.process_count(),
    host_malloc.describe(),
  )
  hint = host_malloc.cpu_hint(jax.devices()[0].platform, host_malloc.allocator())
  if hint:
    logging.info('Tip: %s.', hint)


def define_distributed_flags() -> None:
  """--distributed and the three multi-host settings it reads (flag, else environment variable)."""
  flags.DEFINE_bool(
    'distributed',
    False,
    'Join a multi-host run with jax.distributed.initialize(): coordinator, process count and id from '
    '--coordinator_address/--num_processes/--process_id, else JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/'
    'JAX_PROCESS_ID, else detected (SLURM, Cloud TPU); see launch/README.md.',
  )
  flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (with --distributed).')
  flags.DEFINE_integer('num_processes', None, 'How many processes join (with --distributed).', lower_bound=1)
  flags.DEFINE_integer('process_id', None, "This process's index, 0 .. num_processes-1 (with --distributed).")


def distributed_args(flag_values: Mapping[str, Optional[object]], environ: Mapping[str, str]) -> dict:
  """The set ones of {'coordinator_address': str, 'num_processes': int, 'process_id': int}: a flag's
  value, else its environment variable. Raises app.UsageError naming a variable that is not an integer."""
  out = {}
  for name, (var, kind) in DISTRIBUTED_ENV.items():
    value = flag_values.get(name)
    if value is None and environ.get(var, '').strip():
      try:
        value = kind(environ[var].strip())
      except ValueError:
        raise app.UsageError(f'{var}={environ[var]!r} is not an integer') from None
    if value is not None:
      out[name] = value
  return out


def initialize_distributed(flag_values=None, environ=None) -> None:
  """Call jax.distributed.initialize() if --distributed (or one of its settings) is given.

  Settings not given by a flag or variable are left to JAX's cluster detection
  (SLURM, Cloud TPU, ...); if that finds none either, a one-line usage error
  names what to set instead of JAX's bare 'Number of processes must be defined.'
  """
  import jax

  fv = flags.FLAGS if flag_values is None else flag_values
  values = {name: getattr(fv, name) for name in DISTRIBUTED_ENV}
  if not fv.distributed and all(v is None for v in values.values()):
    return
  kwargs = distributed_args(values, os.environ if environ is None else environ)
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # a missing or inconsistent setting
    missing = [f'{var} (or --{name})' for name, (var, _) in DISTRIBUTED_ENV.items() if name not in kwargs]
    if 'defined' in str(e) and missing:
      raise app.UsageError(
        f'--distributed: no cluster detected and not set: {", ".join(missing)}; see launch/README.md'
      ) from None
    raise app.UsageError(f'--distributed: {e}') from None


def parse_flags(argv: list[str]) -> list[str]:
  """`app.run`'s flag parser for the entry points with `--config`: a `--config.KEY=VALUE` override of a
  key the config lacks ends the program with one line naming the override (and, for a section, the
  objectives that bring it) instead of ml_collections' traceback."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:
    message = str(e)
    key = re.findall(r'[A-Za-z_]\w*', message)[0]
    suggestion = re.search(r'Did you mean "(\w+)"', message)
    overrides = [a for a in argv[1:] if a.startswith('--config.')]
    named = [a for a in overrides if key in a.split('=', 1)[0].split('.')[1:]] or overrides
    hint = f'Did you mean {suggestion.group(1)!r}?' if suggestion else _section_hint(key)
    print(f'error: {" ".join(named)}: the config has no key {key!r}. {hint}', file=sys.stderr)
    sys.exit(1)
  except flags.Error as e:  # what absl's own parser reports: a value that does not parse
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def _section_hint(key: str) -> str:
  """Which objectives' runs carry section `key`, or how to list a config's keys."""
  from mvm_jax import methods

  objectives = sorted(
    {name for m in methods.METHODS.values() for name, s in m.objective_sections.items() if s.name == key}
  )
  if objectives:
    return (
      f'config.{key} is the section of objectives {", ".join(objectives)}; a run carries it only when it '
      'trains one of them: start from a preset that does, or add the section at its defaults in your '
      'config file with methods.set_objectives(config, {...}).'
    )
  return "Its keys: the config file, or config.json in a run's workdir."


def exit_now(message: str, code: int = 1) -> None:
  """Print `message` to stderr and end the process at once, without waiting for other threads.

  For a checkpoint write that failed: orbax's threads that wait for the rest of
  that write never finish, so a normal exit (which joins them) would hang.
  """
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  logging.flush()
  os._exit(code)


@contextlib.contextmanager
def run_errors_as_messages():
  """Around an entry point's run: the errors a user can act on end the program with one line.

  A data setting (list file, root, class names) is a usage error naming the key;
  a checkpoint that does not read back or cannot be written, and a data worker
  process that died, end with a message that says what happened and what to do.
  Data workers' shared memory is released however the run ends.
  """
  from mvm_jax.data import pipeline
  from mvm_jax.data.sources import SourceError
  from mvm_jax.train import checkpointing

  try:
    yield
  except SourceError as e:
    raise app.UsageError(str(e)) from None
  except checkpointing.CheckpointError as e:  # no checkpoint reads back: says which and why
    raise SystemExit(f'error: {e}') from None
  except checkpointing.CheckpointWriteError as e:  # orbax's threads of the failed write never end
    pipeline.release_shared_memory()
    exit_now(f'error: {e}')
  except RuntimeError as e:
    if 'Worker process was terminated' not in str(e):  # Grain: a data worker process died
      raise
    raise SystemExit(
      f'error: a data worker process died ({e}); exit code -9 is a kill, often the out-of-memory '
      'killer: lower data.num_workers, data.prefetch or data.cache_decoded_videos. The checkpoints are '
      'intact: rerun the same command to resume.'
    ) from None
  finally:
    pipeline.release_shared_memory()  # data workers' batches: nothing left at exit
