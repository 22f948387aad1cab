"""Attentive-probe entry point: a cross-attention pooling head on a frozen encoder's patch tokens.

  python -m mvm_jax.attentive_probe --config configs/attentive_probe.py:tiny \
    --config.init_from=/tmp/mae_tiny --workdir /tmp/mae_tiny/attentive_probe
  python -m mvm_jax.attentive_probe --config configs/attentive_probe.py:tiny \
    --config.init_from=random:/tmp/mae_tiny --workdir /tmp/random_attentive   # random init, that run's settings

The model (and clip shape) come from the pre-training run in init_from.
All patch tokens are cached in --workdir (tokens_{split}.npz) and reused by
a rerun; results go to --workdir/results.json.
"""

from absl import app, flags

from mvm_jax import console, host_malloc
from mvm_jax.evaluate import cli

cli.define_flags('Config file and preset, e.g. configs/attentive_probe.py:tiny.')


def main(argv):
  cli.main(argv, 'attentive_probe')


if __name__ == '__main__':
  host_malloc.rerun_with_tcmalloc()
  flags.FLAGS.alsologtostderr = True
  app.run(main, flags_parser=console.parse_flags)
