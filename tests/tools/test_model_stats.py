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


def test_model_stats_count_the_methods_own_model_and_refuse_a_vqvae():
  """mae_motion counts its MotionAutoencoder (same parameters as MAE-ST, its frame-difference target
  costs FLOPs); a VQ-VAE has no video encoder to count; the table is the method's."""
  from configs import vqvae
  from mvm_jax import config_schema, methods

  mae = model_stats.model_stats(micro_config(), num_classes=10)
  motion_config = micro_config()
  with motion_config.unlocked():
    motion_config.model.name = 'mae_motion'
    motion_config.motion = methods.base_config('mae_motion').motion
  motion = model_stats.model_stats(motion_config, num_classes=10)
  assert motion['params'] == mae['params']
  assert motion['gflops_per_clip']['mae_sparse'] > mae['gflops_per_clip']['mae_sparse']
  assert motion['gflops_per_clip']['finetune_encoder'] == mae['gflops_per_clip']['finetune_encoder']
  table = model_stats.format_table(motion, motion_config)
  assert table.startswith('clip 4×32×32, patch 2×8×8, mask ') and '  dense / sparse' in table
  with pytest.raises(
    config_schema.ConfigError, match="^config.model.name: 'vqvae' has no video encoder to count"
  ):
    model_stats.model_stats(vqvae.get_config('tiny'))
