"""Train-step benchmark: step time, clips/s, GFLOP/s, MFU, sparse vs dense speed-up.

  python -m mvm_jax.tools.bench --config configs/mae_st.py:bench_small [--json] [--steps 10]

A script, not a test: everything it prints is measured in this one run. The
step runs on synthetic clips of the config's shape (the data loader has its
own benchmark), after warm-up, timed as the median of `--steps` steps.
FLOPs are model FLOPs (`loop.step_flops`: XLA's cost analysis of the lowered step; remat
recomputation not counted, so a remat row's MFU is lower by what it recomputes); the matmul peak is an
n×n matmul (`--peak_dtype`, f32 by default) measured on the same device in the same run.
Also: the phases (forward; backward = forward+backward minus forward; optimizer = the step
minus forward+backward, each compiled and timed alone), the compile time (and the process's other
set-up seconds: state init, FLOP count, warm-up), XLA's memory analysis
(peak estimate), the host's page faults and kernel CPU time per step with the malloc serving them
(on CPU, glibc's re-faults the step's temporaries every step: see `mvm_jax.host_malloc`) and, with
`--remat_variants`, the same for each rematerialisation policy.
`--profile_dir DIR` traces three steps; `python -m mvm_jax.tools.profile_summary DIR` prints the
time per op kind (matmul, attention, gather/scatter, elementwise fusions, ...).

Imports no TensorFlow, Grain or PyAV: runs on an image with only jax/flax/optax/einops/ml-collections.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mvm_jax import console, host_malloc
from mvm_jax.train import flops, loop


def synthetic_batch(config, seed: int = 0) -> dict:
  """Random uint8 clips with the config's shape, as the loader emits them (the step normalises
  them on the device): {'video': [B, T, S, S, 3], 'label': [B], 'index': [B]}."""
  rng = np.random.default_rng(seed)
  d = config.data
  video = rng.integers(0, 256, (config.batch_size, d.num_frames, d.crop_size, d.crop_size, 3), np.uint8)
  return {
    'video': video,
    'label': np.zeros(config.batch_size, np.int32),
    'index': np.arange(config.batch_size, dtype=np.int32),
  }


def memory_analysis(compiled) -> dict:
  """XLA's memory analysis of a compiled step, in MB: arguments, outputs, temporaries, and the peak
  estimate arguments + outputs - aliased (donated) + temporaries. {} where the backend has none."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 (backends raise various types, or return None)
    m = None
  if m is None:
    return {}
  mb = lambda n: float(n) / 2**20  # noqa: E731
  args, out, alias, temp = (
    m.argument_size_in_bytes,
    m.output_size_in_bytes,
    m.alias_size_in_bytes,
    m.temp_size_in_bytes,
  )
  return {
    'argument_mb': mb(args),
    'output_mb': mb(out),
    'temp_mb': mb(temp),
    'peak_mb': mb(args + out - alias + temp),
  }


PROFILED_STEPS = 3


class Stopwatch:
  """Seconds between successive `lap(name)` calls, in `seconds` by name."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._last = time.perf_counter()

  def lap(self, name: str) -> None:
    now = time.perf_counter()
    self.seconds[name] = now - self._last
    self._last = now


def time_train_step(config, steps: int, warmup: int, phase: str = 'step', profile_dir: str = '') -> dict:
  """Median step time (s), XLA FLOPs per step, compile time (s) and XLA memory analysis of the
  config's train step (or of its first `phase`: 'forward', 'gradients'; see make_train_step).
  With `profile_dir`, three more steps run under `jax.profiler.trace` into it afterwards
  (read it with `python -m mvm_jax.tools.profile_summary DIR`, or TensorBoard/XProf)."""
  clock = Stopwatch()
  exp, state = loop.build_experiment(config, samples_per_epoch=config.batch_size * 1000, phase=phase)
  batch = loop.global_batch(synthetic_batch(config), exp.batch_sharding, exp.batch_keys)
  jax.block_until_ready((state, batch))
  clock.lap('init')
  lowered, compiled = loop.lower_and_compile(exp, state, batch)
  clock.lap('compile')
  step_flops = loop.step_flops(exp, lowered, batch, phase)
  clock.lap('flop_count')
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  clock.lap('warmup')
  times = []
  before = resource.getrusage(resource.RUSAGE_SELF)
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  after = resource.getrusage(resource.RUSAGE_SELF)
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for _ in range(PROFILED_STEPS):
        state, metrics = compiled(state, batch)
      jax.block_until_ready(metrics)
  return {
    'step_s': float(np.median(times)),
    'flops': step_flops,
    'compile_s': clock.seconds['compile'],
    'setup_s': clock.seconds,
    'memory': memory_analysis(compiled),
    # Host side of the timed steps: page faults (fresh temporaries) and CPU time in the kernel.
    'page_faults_per_step': (after.ru_minflt - before.ru_minflt) / max(steps, 1),
    'kernel_cpu_s_per_step': (after.ru_stime - before.ru_stime) / max(steps, 1),
  }


def _variant(config, **model):
  c = config.copy_and_resolve_references()
  c.model.update(model)
  return c


def configs_to_time(config, dense: bool = True, remat_variants: Sequence[str] = ()) -> list:
  """Every config `bench` builds a step of: `config`, its dense variant, its remat variants (what
  `main` validates before timing any)."""
  return (
    [config]
    + ([_variant(config, dense_encoder=True)] if dense else [])
    + [_variant(config, remat=name) for name in remat_variants]
  )


def bench(
  config,
  steps: int = 10,
  warmup: int = 2,
  dense: bool = True,
  phases: bool = True,
  remat_variants: Sequence[str] = (),
  peak_dtype: str = 'float32',
  profile_dir: str = '',
) -> dict:
  """Everything measured in this one run (see the module doc); the JSON keys of `--json`."""
  sparse = time_train_step(config, steps, warmup, profile_dir=profile_dir)
  peak = flops.measure_matmul_peak(dtype=jnp.dtype(peak_dtype))
  gflops_per_s = sparse['flops'] / sparse['step_s'] / 1e9
  result = {
    'device': f'{jax.device_count()}x {jax.devices()[0].device_kind}',
    'step_ms': sparse['step_s'] * 1e3,
    'clips_per_s': config.batch_size / sparse['step_s'],
    'gflops_per_s': gflops_per_s,
    'matmul_peak_gflops_per_s': peak / 1e9,
    'matmul_peak_dtype': peak_dtype,
    'mfu': gflops_per_s * 1e9 / peak,
    'compile_s': sparse['compile_s'],
    # Where a bench process's time goes besides the timed steps: state init (its own compile
    # included), the step's compile, its FLOP count (a CPU lowering on accelerators), warm-up.
    'setup_s': sparse['setup_s'],
    'memory': sparse['memory'],
    'peak_memory_mb': sparse['memory'].get('peak_mb'),
    'host_malloc': host_malloc.describe(),
    'page_faults_per_step': sparse['page_faults_per_step'],
    'kernel_cpu_ms_per_step': sparse['kernel_cpu_s_per_step'] * 1e3,
    'sparse_vs_dense_speedup': None,
  }
  # The accelerator's data-sheet peak (config.peak_tflops_per_device, else a known chip's; None on CPU).
  device_peak = None
  if jax.devices()[0].platform != 'cpu' or config.get('peak_tflops_per_device', -1.0) > 0:
    device_peak = flops.peak_flops_per_device(config.get('peak_tflops_per_device', -1.0))
  result['device_peak_tflops'] = None if device_peak is None else device_peak / 1e12
  result['mfu_device_peak'] = None if device_peak is None else gflops_per_s * 1e9 / device_peak
  if phases:
    forward = time_train_step(config, steps, warmup, phase='forward')
    gradients = time_train_step(config, steps, warmup, phase='gradients')
    result['phases_ms'] = {
      'forward': forward['step_s'] * 1e3,
      'backward': (gradients['step_s'] - forward['step_s']) * 1e3,
      'optimizer': (sparse['step_s'] - gradients['step_s']) * 1e3,
    }
    result['phases_gflop'] = {
      'forward': forward['flops'] / 1e9,
      'backward': (gradients['flops'] - forward['flops']) / 1e9,
      'optimizer': (sparse['flops'] - gradients['flops']) / 1e9,
    }
  if dense:
    dense_config = _variant(config, dense_encoder=True)
    dense_run = time_train_step(dense_config, steps, warmup)
    result['dense_step_ms'] = dense_run['step_s'] * 1e3
    result['sparse_vs_dense_speedup'] = result['dense_step_ms'] / result['step_ms']
    # What the speed-up could be if wall time followed the work: the ratio of the two steps' XLA FLOPs.
    result['sparse_vs_dense_flop_ratio'] = dense_run['flops'] / sparse['flops']
    result['speedup_share_of_flop_ratio'] = (
      result['sparse_vs_dense_speedup'] / result['sparse_vs_dense_flop_ratio']
    )
  remat = {}
  for name in remat_variants:
    if name == config.model.get('remat', 'none'):
      r = sparse
    else:
      r = time_train_step(_variant(config, remat=name), steps, warmup)
    remat[name] = {
      'step_ms': r['step_s'] * 1e3,
      'clips_per_s': config.batch_size / r['step_s'],
      'mfu': r['flops'] / r['step_s'] / peak,
      'mfu_device_peak': None if device_peak is None else r['flops'] / r['step_s'] / device_peak,
      'tflops_per_s': r['flops'] / r['step_s'] / 1e12,
      'compile_s': r['compile_s'],
      'peak_memory_mb': r['memory'].get('peak_mb'),
    }
  if remat:
    result['remat'] = remat
  return result


def _mb(value) -> str:
  return '       n/a' if value is None else f'{value:10.1f}'


def format_table(result: dict, config) -> str:
  d, m, masking = config.data, config.model, config.get('masking')  # (a VQ-VAE masks nothing)
  lines = [
    f'{result["device"]}; clip {d.num_frames}×{d.crop_size}², '
    f'batch {config.batch_size}, encoder {m.encoder.width}-d×{m.encoder.depth}, '
    f'mask {masking.ratio if masking else "none"}, {m.dtype}, attention {m.get("attention", "xla")}, remat {m.get("remat", "none")}',
    f'train step (median)       {result["step_ms"]:10.1f} ms',
    f'clips/s                   {result["clips_per_s"]:10.2f}',
    f'achieved GFLOP/s (XLA)    {result["gflops_per_s"]:10.1f}',
    f'{result["matmul_peak_dtype"]:>7} matmul peak GFLOP/s {result["matmul_peak_gflops_per_s"]:9.1f}',
    f'MFU (achieved / peak)     {result["mfu"]:10.3f}',
  ]
  if result['mfu_device_peak'] is not None:
    lines.append(
      f'MFU vs device peak        {result["mfu_device_peak"]:10.3f}  ({result["device_peak_tflops"]:.0f} TFLOP/s)'
    )
  lines += [
    f'compile time              {result["compile_s"]:10.1f} s  ('
    + ', '.join(f'{k} {v:.1f} s' for k, v in result['setup_s'].items() if k != 'compile')
    + ')',
    f'peak memory (XLA)         {_mb(result["peak_memory_mb"])} MB',
    f'host: page faults / step  {result["page_faults_per_step"]:10.0f}  '
    f'(kernel CPU {result["kernel_cpu_ms_per_step"]:.0f} ms/step; malloc {result["host_malloc"]})',
  ]
  if 'phases_ms' in result:
    lines.append('phase        ms    share  GFLOP (XLA)')
    total = result['step_ms']
    for name, ms in result['phases_ms'].items():
      lines.append(f'  {name:<9} {ms:7.1f}  {ms / total:6.1%}  {result["phases_gflop"][name]:9.2f}')
  if result['sparse_vs_dense_speedup']:
    lines += [
      f'dense step (w/ [M])       {result["dense_step_ms"]:10.1f} ms',
      f'sparse vs dense speed-up  {result["sparse_vs_dense_speedup"]:10.2f}×',
      f'  its XLA FLOP ratio      {result["sparse_vs_dense_flop_ratio"]:10.2f}×  '
      f'(speed-up / FLOP ratio {result["speedup_share_of_flop_ratio"]:.2f})',
    ]
  if result.get('remat'):
    lines.append('remat            step ms   clips/s    MFU  compile s  peak MB')
    for name, r in result['remat'].items():
      lines.append(
        f'  {name:<14} {r["step_ms"]:8.1f} {r["clips_per_s"]:9.2f} {r["mfu"]:6.3f} {r["compile_s"]:10.1f} '
        f'{_mb(r["peak_memory_mb"])}'
      )
  return '\n'.join(lines)


def main(argv):
  del argv
  from mvm_jax import config as config_lib

  f = flags.FLAGS
  variants = [v for v in f.remat_variants.split(',') if v]
  try:
    for config in configs_to_time(f.config, f.dense, variants):
      config_lib.validate(config)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  result = bench(f.config, f.steps, f.warmup, f.dense, f.phases, variants, f.peak_dtype, f.profile_dir)
  print(json.dumps(result) if f.json else format_table(result, f.config))


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('steps', 10, 'Timed steps (median reported).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
  flags.DEFINE_bool('dense', True, 'Also time the dense (mask tokens in the encoder) variant.')
  flags.DEFINE_bool('phases', True, 'Also time forward and forward+backward alone (the phase table).')
  flags.DEFINE_string(
    'remat_variants', '', 'Comma-separated model.remat policies to time too (none,full,dots_saveable).'
  )
  flags.DEFINE_string('peak_dtype', 'float32', 'dtype of the n×n matmul whose speed is the MFU peak.')
  flags.DEFINE_string(
    'profile_dir', '', 'Trace 3 steps of the (sparse) train step with jax.profiler into this folder.'
  )


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=console.parse_flags)
