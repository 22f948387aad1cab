"""Train-step benchmark: step time, clips/s, GFLOP/s, MFU, sparse vs dense speed-up.

  python -m mvm_jax.tools.bench --config configs/mae_st.py:bench_small [--json] [--steps 10]

A script, not a test: everything it prints is measured in this one run. The
step runs on synthetic clips of the config's shape (the data loader has its
own benchmark), after warm-up, timed as the median of `--steps` steps.
FLOPs are XLA's cost analysis of the compiled step; the matmul peak is an
f32 n×n matmul measured on the same device in the same run.
"""

from __future__ import annotations

import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

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


def time_train_step(config, steps: int, warmup: int) -> dict:
  """Median step time (s) and XLA FLOPs per step of the config's train step."""
  exp = loop.build_experiment(config, samples_per_epoch=config.batch_size * 1000)
  batch = loop.global_batch(synthetic_batch(config), exp.batch_sharding, exp.batch_keys)
  compiled, step_flops = loop.compile_step(exp, batch)
  state = exp.state
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return {'step_s': float(np.median(times)), 'flops': step_flops}


def bench(config, steps: int = 10, warmup: int = 2, dense: bool = True) -> dict:
  sparse = time_train_step(config, steps, warmup)
  peak = flops.measure_matmul_peak()
  gflops_per_s = sparse['flops'] / sparse['step_s'] / 1e9
  result = {
    'step_ms': sparse['step_s'] * 1e3,
    'clips_per_s': config.batch_size / sparse['step_s'],
    'gflops_per_s': gflops_per_s,
    'matmul_peak_gflops_per_s': peak / 1e9,
    'mfu': gflops_per_s * 1e9 / peak,
    'sparse_vs_dense_speedup': None,
  }
  if dense:
    dense_config = config.copy_and_resolve_references()
    dense_config.model.dense_encoder = True
    result['dense_step_ms'] = time_train_step(dense_config, steps, warmup)['step_s'] * 1e3
    result['sparse_vs_dense_speedup'] = result['dense_step_ms'] / result['step_ms']
  return result


def format_table(result: dict, config) -> str:
  d = config.data
  lines = [
    f'{jax.device_count()}× {jax.devices()[0].device_kind}; clip {d.num_frames}×{d.crop_size}², '
    f'batch {config.batch_size}, encoder {config.model.encoder.width}-d×{config.model.encoder.depth}, '
    f'mask {config.masking.ratio}, {config.model.dtype}',
    f'train step (median)       {result["step_ms"]:10.1f} ms',
    f'clips/s                   {result["clips_per_s"]:10.2f}',
    f'achieved GFLOP/s (XLA)    {result["gflops_per_s"]:10.1f}',
    f'f32 matmul peak GFLOP/s   {result["matmul_peak_gflops_per_s"]:10.1f}',
    f'MFU (achieved / peak)     {result["mfu"]:10.3f}',
  ]
  if result['sparse_vs_dense_speedup']:
    lines += [
      f'dense step (w/ [M])       {result["dense_step_ms"]:10.1f} ms',
      f'sparse vs dense speed-up  {result["sparse_vs_dense_speedup"]:10.2f}×',
    ]
  return '\n'.join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  result = bench(f.config, f.steps, f.warmup, f.dense)
  print(json.dumps(result) if f.json else format_table(result, f.config))


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('steps', 10, 'Timed steps (median reported).')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
  flags.DEFINE_bool('dense', True, 'Also time the dense (mask tokens in the encoder) variant.')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main)
