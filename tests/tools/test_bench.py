"""tools.bench: the command line's JSON, and a timed step that imports no data or logging stack."""

import json

import pytest

from tests.conftest import MICRO_FLAGS, micro_config, run_module


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
  assert list(out['setup_s']) == ['init', 'compile', 'flop_count', 'warmup']
  assert out['setup_s']['compile'] == out['compile_s'] and min(out['setup_s'].values()) > 0
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


def test_step_flops_count_the_lowered_step_per_device_and_cudnn_attention_as_einsums():
  """loop.step_flops: on one device the lowered step's FLOPs match the compiled count (on a GPU the
  compiled count skips the cuBLAS/cuDNN custom calls); on 8 they are the same work over 8 devices
  (model FLOPs: the optimizer update each device repeats counts once); the one-CPU-device twin an
  accelerator counts on gives the same; a config with cuDNN attention is counted as its
  einsum-attention twin, without lowering the cuDNN step."""
  import dataclasses

  import jax
  import ml_collections

  from mvm_jax import sharding
  from mvm_jax.tools import aot_compile
  from mvm_jax.train import flops, loop

  config = micro_config()
  config.model.attention = 'xla'
  counted, compiled = {}, {}
  for devices in (1, 8):
    config.mesh.shape = (devices, 1, 1)
    exp, batch = aot_compile.abstract_step(config, jax.devices()[:devices])
    with sharding.sharding_context(exp.mesh, config.mesh.rules):
      lowered = exp.train_step.lower(exp.abstract_state, batch)
    counted[devices] = loop.step_flops(exp, lowered, batch)
    compiled[devices] = flops.compiled_flops(lowered.compile())
  assert counted[1] == pytest.approx(compiled[1], rel=0.02)
  assert counted[8] * 8 == pytest.approx(counted[1], rel=1e-3)
  assert counted[8] < compiled[8]  # each device also runs the whole (replicated) optimizer update
  # What an accelerator counts: the step's twin lowered for one CPU device.
  assert loop.counting_twin_flops(config, batch) == pytest.approx(counted[1], rel=1e-3)

  config.model.attention = 'cudnn'
  cudnn_exp = dataclasses.replace(exp, config=ml_collections.FrozenConfigDict(config))
  as_einsum = loop.step_flops(cudnn_exp, None, batch)  # None: the cuDNN step itself is never lowered
  assert as_einsum == pytest.approx(counted[8], rel=0.02)


@pytest.mark.parametrize('change', ['remat', 'grad_accum'])
def test_step_flops_are_model_flops_under_remat_and_gradient_accumulation(change):
  """The lowered step's own count holds the remat recomputation (more than the model's work) and,
  with gradient accumulation, the micro-batch loop's body once (a micro-batch's work): step_flops
  counts both as the plain step (the twin: no remat, the whole batch in one pass)."""
  import jax

  from mvm_jax import sharding
  from mvm_jax.tools import aot_compile
  from mvm_jax.train import flops, loop

  def counts(config):
    exp, batch = aot_compile.abstract_step(config, jax.devices()[:1])
    with sharding.sharding_context(exp.mesh, config.mesh.rules):
      lowered = exp.train_step.lower(exp.abstract_state, batch)
    return flops.lowered_flops(lowered), loop.step_flops(exp, lowered, batch)

  config = micro_config()
  plain, plain_model = counts(config)
  assert plain_model == plain and loop.twin_reasons(config, 'cpu') == []
  if change == 'remat':
    config.model.remat = 'full'
  else:
    config.optim.grad_accum_steps = 2
  own, model = counts(config)
  assert own > 1.1 * plain if change == 'remat' else own < 0.7 * plain
  assert model == pytest.approx(plain, rel=1e-3)
  assert len(loop.twin_reasons(config, 'cpu')) == 1  # and the twin left the caller's config as it was
