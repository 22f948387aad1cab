"""tools.model_stats: counts and FLOPs from XLA, in the documented JSON shape."""

import json

import pytest

from mvm_jax.tools import model_stats
from tests.conftest import MICRO_FLAGS, micro_config, run_module


def test_model_stats_counts_and_sparse_is_cheaper():
  config = micro_config()
  stats = model_stats.model_stats(config, num_classes=10)
  p, g = stats['params'], stats['gflops_per_clip']
  # encoder: patch embed + positions + tokens + 2 blocks + norm, counted by hand for width 32, patch 2x8x8
  d, patch_in, n_spatial, n_temporal = 32, 2 * 8 * 8 * 3, 16, 2
  block = 4 * (d * d + d) + 2 * d * 4 * d + 4 * d + d + 4 * d
  expected_encoder = (patch_in * d + d) + (n_spatial + n_temporal + 1) * d + d + 2 * block + 2 * d
  assert p['encoder'] == expected_encoder
  assert p['finetune_encoder'] == expected_encoder + d * 10 + 10  # + head
  assert p['decoder'] > 0
  assert 0 < g['mae_sparse'] < g['mae_dense']
  assert g['finetune_encoder'] > 0


@pytest.mark.slow
def test_model_stats_cli_json():
  result = run_module(
    'mvm_jax.tools.model_stats', '--config', 'configs/mae_st.py:tiny', *MICRO_FLAGS, '--json'
  )
  assert result.returncode == 0, result.stderr[-2000:]
  stats = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(stats['params']) == {'encoder', 'decoder', 'finetune_encoder'}
  assert set(stats['gflops_per_clip']) == {'mae_sparse', 'mae_dense', 'finetune_encoder'}
