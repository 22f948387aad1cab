"""What the evaluation entry points share: absl flags in, one evaluator run, a summary line out."""

from __future__ import annotations

import importlib
import os

from absl import app, flags, logging

from mvm_jax import console


def main(argv, evaluator: str) -> None:
  """Run ``mvm_jax.evaluate.<evaluator>.run(FLAGS.config, FLAGS.workdir)`` and print its summary.

  Config errors (a bad value, a missing ``init_from`` workdir) end the
  program with a usage message naming the key, before anything compiles.
  """
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_library_logs()
  import jax  # after flag parsing, as Grain and jax.distributed expect

  FLAGS = flags.FLAGS
  console.initialize_distributed()
  from mvm_jax.config import ConfigError

  module = importlib.import_module(f'mvm_jax.evaluate.{evaluator}')
  config, workdir = FLAGS.config, os.path.expanduser(FLAGS.workdir)
  try:
    module.validate(config)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  console.log_runtime()
  logging.info('Config:\n%s', config)
  with console.run_errors_as_messages():
    try:
      results = module.run(config, workdir)
    except (ConfigError, FileNotFoundError) as e:  # one line naming the key or file
      raise app.UsageError(str(e)) from None
  if jax.process_index() == 0:
    print(results['summary'], flush=True)


def define_flags(help_config: str) -> None:
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', None, help_config, lock_config=True)
  flags.DEFINE_string('workdir', None, 'Where features_{split}.npz, results.json and the confusion PNG go.')
  console.define_distributed_flags()
  flags.mark_flags_as_required(['config', 'workdir'])
