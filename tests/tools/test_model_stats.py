"""model_stats and bench: numbers come from XLA and wall-clock, in the documented JSON shape."""

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


@pytest.mark.slow
def test_bench_cli_json():
  result = run_module(
    'mvm_jax.tools.bench',
    '--config',
    'configs/mae_st.py:tiny',
    *MICRO_FLAGS,
    '--json',
    '--steps=2',
    '--warmup=1',
    '--remat_variants=none,full',
  )
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert set(out) >= {
    'step_ms',
    'clips_per_s',
    'gflops_per_s',
    'matmul_peak_gflops_per_s',
    'mfu',
    'sparse_vs_dense_speedup',
  }
  assert out['step_ms'] > 0 and out['clips_per_s'] == pytest.approx(8 / out['step_ms'] * 1e3)
  assert out['mfu'] == pytest.approx(out['gflops_per_s'] / out['matmul_peak_gflops_per_s'])
  assert out['sparse_vs_dense_speedup'] > 0
  assert out['compile_s'] > 0 and out['peak_memory_mb'] > 0 and out['memory']['temp_mb'] >= 0
  assert set(out['phases_ms']) == set(out['phases_gflop']) == {'forward', 'backward', 'optimizer'}
  assert out['phases_gflop']['forward'] > 0 and out['phases_gflop']['backward'] > 0
  assert sum(out['phases_ms'].values()) == pytest.approx(out['step_ms'])
  assert set(out['remat']) == {'none', 'full'} and out['remat']['none']['step_ms'] == out['step_ms']
  assert all(r['compile_s'] > 0 and r['peak_memory_mb'] > 0 for r in out['remat'].values())


# Blocks the heavy data/logging stacks: importing any of them fails in the child.
_NO_HEAVY_IMPORTS = """
import sys
BLOCKED = ('tensorflow', 'tensorflow_datasets', 'grain', 'av', 'clu')
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ImportError(f'the benchmark path imported {name}')
sys.meta_path.insert(0, Block())
from tests.conftest import micro_config
from mvm_jax.tools import bench
config = micro_config()
result = bench.time_train_step(config, steps=1, warmup=0)
assert result['step_s'] > 0, result
loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)
assert not loaded, loaded
print('ok')
"""


def test_bench_path_imports_no_tensorflow_grain_or_pyav():
  import os
  import subprocess
  import sys

  from tests.conftest import REPO

  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run(
    [sys.executable, '-c', _NO_HEAVY_IMPORTS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0 and result.stdout.strip().endswith('ok'), result.stderr[-3000:]


def test_profile_summary_splits_a_traced_step_by_kind_phase_and_part(tmp_path):
  """tools.bench --profile_dir traces the step; profile_summary reads the trace and its HLO:
  matmuls lead, forward and backward are told apart, encoder and decoder parts are named."""
  from mvm_jax.tools import bench, profile_summary

  bench.time_train_step(micro_config(), steps=1, warmup=0, profile_dir=str(tmp_path))
  text = profile_summary.summarize(str(tmp_path), steps=bench.PROFILED_STEPS, top=5)
  kinds = dict(line.split()[:2] for line in text.split('\n\nphase')[0].splitlines()[3:])
  assert 'matmul' in kinds and float(kinds['matmul']) > 0, text
  assert '\nforward ' in text and '\nbackward ' in text, text
  assert 'encoder attn' in text and 'decoder mlp' in text, text
  with pytest.raises(ValueError, match='no HLO of a module named jit_nothing'):
    profile_summary.summarize(str(tmp_path), module_name='jit_nothing')
  with pytest.raises(FileNotFoundError, match='tools.bench --profile_dir'):
    profile_summary.summarize(str(tmp_path / 'empty'))
