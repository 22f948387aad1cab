"""tools.bench: the command line's JSON, and a timed step that imports no data or logging stack."""

import json

import pytest

from tests.conftest import MICRO_FLAGS, run_module


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
  assert out['sparse_vs_dense_flop_ratio'] > 1  # the dense encoder also runs the masked tokens
  assert out['speedup_share_of_flop_ratio'] == pytest.approx(
    out['sparse_vs_dense_speedup'] / out['sparse_vs_dense_flop_ratio']
  )
  assert out['compile_s'] > 0 and out['peak_memory_mb'] > 0 and out['memory']['temp_mb'] >= 0
  assert set(out['phases_ms']) == set(out['phases_gflop']) == {'forward', 'backward', 'optimizer'}
  assert out['phases_gflop']['forward'] > 0 and out['phases_gflop']['backward'] > 0
  assert sum(out['phases_ms'].values()) == pytest.approx(out['step_ms'])
  assert set(out['remat']) == {'none', 'full'} and out['remat']['none']['step_ms'] == out['step_ms']
  assert all(r['compile_s'] > 0 and r['peak_memory_mb'] > 0 for r in out['remat'].values())
  assert out['page_faults_per_step'] >= 0 and out['kernel_cpu_ms_per_step'] >= 0
  assert out['host_malloc'].split()[0] in ('glibc', 'tcmalloc', 'jemalloc', 'mimalloc')


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
