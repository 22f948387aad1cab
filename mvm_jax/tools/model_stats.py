"""Parameter counts and forward GFLOPs per clip, from XLA's cost analysis.

  python -m mvm_jax.tools.model_stats --config configs/mae_st.py:vit_l [--json]
  python -m mvm_jax.tools.model_stats --config configs/vimpac.py:large_half [--json]

Nothing runs: parameters come from `jax.eval_shape`, FLOPs from lowering and
compiling forward passes on abstract inputs (batch 1). XLA counts 2 FLOPs per
multiply-add; the papers (fvcore) count 1, shown alongside. What is counted is the
config's method's (`Method.model_stats`, `Method.model_stats_table`).
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from mvm_jax import console, methods


def model_stats(config, num_classes: int = 400) -> dict:
  """{'params': {...}, 'gflops_per_clip': {...}} (XLA convention, 2 per multiply-add) of the config's
  method (`Method.model_stats`); a ConfigError naming `config.model.name` for one with no video encoder."""
  return methods.get(config).model_stats(config, num_classes)


def format_table(stats: dict, config) -> str:
  """`stats` (from `model_stats`) as a table (`Method.model_stats_table`)."""
  return methods.get(config).model_stats_table(stats, config)


def main(argv):
  del argv
  config = flags.FLAGS.config
  stats = model_stats(config, flags.FLAGS.num_classes)
  print(json.dumps(stats) if flags.FLAGS.json else format_table(stats, config))


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('num_classes', 400, 'Classes of the fine-tune head (Kinetics-400 by default).')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=console.parse_flags)
