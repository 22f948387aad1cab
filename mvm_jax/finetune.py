"""Fine-tuning entry point: a pre-trained encoder + linear head, trained end to end, multi-view tested.

  python -m mvm_jax.finetune --config configs/finetune.py:tiny --config.init_from=runs/mae_st_tiny --workdir runs/ft_tiny

Rerunning the same command resumes; the multi-view test runs at the end and
writes `results.json` (key 'finetune') and `finetune_confusion.png`.
"""

from absl import app, flags

from mvm_jax import console, host_malloc
from mvm_jax.evaluate import cli

cli.define_flags('Config file and preset, e.g. configs/finetune.py:tiny.')


def main(argv):
  cli.main(argv, 'finetune')


if __name__ == '__main__':
  host_malloc.rerun_with_tcmalloc()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=console.parse_flags)
