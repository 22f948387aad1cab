"""Pre-training entry point.

  python -m mvm_jax.main --config configs/mae_st.py:tiny --workdir /tmp/mae_tiny
  python -m mvm_jax.main --config configs/mae_st.py:vit_l --workdir gs://... --config.batch_size=256

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from mvm_jax import console, host_malloc

config_flags.DEFINE_config_file(
  'config', None, 'Config file and preset, e.g. configs/mae_st.py:tiny.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Where checkpoints, TensorBoard events and pictures go.')
console.define_distributed_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet_library_logs()
  console.initialize_distributed()  # imports jax after flag parsing, as Grain and jax.distributed expect
  from mvm_jax import config as config_lib
  from mvm_jax.train import loop

  try:
    config_lib.validate(flags.FLAGS.config)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  console.log_runtime()
  with console.run_errors_as_messages():
    result = loop.train_and_evaluate(flags.FLAGS.config, os.path.expanduser(flags.FLAGS.workdir))
  logging.info('Done at step %d. Outputs in %s', result['step'], flags.FLAGS.workdir)


if __name__ == '__main__':
  host_malloc.rerun_with_tcmalloc()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=console.parse_flags)
