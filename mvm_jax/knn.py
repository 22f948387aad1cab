"""Weighted k-NN entry point: classify clips by their nearest train clips in a frozen encoder's feature space.

  python -m mvm_jax.knn --config configs/knn.py:tiny \
    --config.init_from=/tmp/mae_tiny --workdir /tmp/mae_tiny/knn
  python -m mvm_jax.knn --config configs/knn.py:tiny \
    --config.init_from=random:/tmp/mae_tiny --workdir /tmp/random_knn   # random init, that run's settings

The model (and clip shape) come from the pre-training run in init_from.
Features are cached in --workdir and reused by a rerun (or by
mvm_jax.linear_probe with the same --workdir); results go to
--workdir/results.json.
"""

from absl import app, flags

from mvm_jax import console, host_malloc
from mvm_jax.evaluate import cli

cli.define_flags('Config file and preset, e.g. configs/knn.py:tiny.')


def main(argv):
  cli.main(argv, 'knn')


if __name__ == '__main__':
  host_malloc.rerun_with_tcmalloc()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=console.parse_flags)
