"""Linear-probe entry point: a linear classifier on a frozen pre-trained encoder's features.

  python -m mvm_jax.linear_probe --config configs/linear_probe.py:tiny \
    --config.init_from=/tmp/mae_tiny --workdir /tmp/mae_tiny/linear_probe
  python -m mvm_jax.linear_probe --config configs/linear_probe.py:tiny \
    --config.init_from=random:/tmp/mae_tiny --workdir /tmp/random_probe   # random init, that run's settings

The model (and clip shape) come from the pre-training run in init_from.
Features are cached in --workdir and reused by a rerun (or by mvm_jax.knn
with the same --workdir); results go to --workdir/results.json.
"""

from absl import app, flags

from mvm_jax import console, host_malloc
from mvm_jax.evaluate import cli

cli.define_flags('Config file and preset, e.g. configs/linear_probe.py:tiny.')


def main(argv):
  cli.main(argv, 'linear_probe')


if __name__ == '__main__':
  host_malloc.rerun_with_tcmalloc()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=console.parse_flags)
