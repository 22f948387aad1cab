"""FLOPs from XLA's cost analysis, accelerator peaks, and model FLOPs utilisation."""

from __future__ import annotations

import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak TFLOP/s per device, by substring of `device.device_kind`.
KNOWN_PEAK_TFLOPS = (
  ('H200', 989.0),
  ('H100', 989.0),
  ('A100', 312.0),
  ('L4', 121.0),
  ('A10', 125.0),
  ('TPU v6', 918.0),
  ('TPU v5 lite', 197.0),  # v5e's device_kind
  ('TPU v5e', 197.0),
  ('TPU v5', 459.0),  # v5p's device_kind is 'TPU v5' (also 'TPU v5p')
  ('TPU v4', 275.0),
  ('TPU v3', 123.0),
)


def _flops(analysis) -> float:
  """The 'flops' of an XLA cost analysis (a dict, or a list of one per computation)."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def compiled_flops(compiled) -> float:
  """FLOPs of a compiled XLA computation (per device under SPMD; 2 per multiply-add)."""
  return _flops(compiled.cost_analysis())


def lowered_flops(lowered) -> float:
  """FLOPs of a lowered (not compiled) computation: XLA's cost analysis of the HLO before
  optimisation (within 0.2 % of the compiled count on the MAE step), so nothing is compiled."""
  return _flops(lowered.cost_analysis())


def jit_flops(fn, *args) -> float:
  """FLOPs of `jax.jit(fn)` compiled for `args` (arrays or `jax.ShapeDtypeStruct`s: nothing runs)."""
  return compiled_flops(jax.jit(fn).lower(*args).compile())


def param_count(tree) -> int:
  """Number of scalars in the leaves of `tree` (params, or their `jax.eval_shape`)."""
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def measure_matmul_peak(n: Optional[int] = None, dtype=jnp.float32, repeats: int = 7) -> float:
  """Achieved FLOP/s of an n×n matmul of random numbers on the default device (median of repeats).
  n defaults to 1024 on CPU and 8192 on an accelerator, where a smaller product is mostly launch
  and synchronisation (an H100 gave 16 TFLOP/s in bf16 at n=1024)."""
  if n is None:
    n = 1024 if jax.devices()[0].platform == 'cpu' else 8192
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2.0 * n**3 / float(np.median(times))


def peak_flops_per_device(configured_tflops: float = -1.0) -> Optional[float]:
  """Configured peak, else a known accelerator's, else the measured CPU matmul peak."""
  if configured_tflops > 0:
    return configured_tflops * 1e12
  device = jax.devices()[0]
  for name, tflops in KNOWN_PEAK_TFLOPS:
    if name in device.device_kind:
      return tflops * 1e12
  if device.platform == 'cpu':
    return measure_matmul_peak()
  return None
