"""Fine-tuning entry point.

  python -m mvm_jax.finetune --config configs/finetune.py:tiny --config.init_from=runs/mae_st_tiny --workdir runs/ft_tiny

Rerunning the same command resumes; the multi-view test runs at the end and
writes `results.json` (key 'finetune') and `finetune_confusion.png`.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file('config', None, 'Config file and preset, e.g. configs/finetune.py:tiny.')
flags.DEFINE_string('workdir', None, 'Where checkpoints, events and results go.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from mvm_jax.evaluate import finetune

  finetune.finetune_and_evaluate(flags.FLAGS.config, os.path.expanduser(flags.FLAGS.workdir))


if __name__ == '__main__':
  flags.FLAGS.alsologtostderr = True
  app.run(main)
