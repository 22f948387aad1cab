"""Ahead-of-time compilation of the real train step for a TPU slice, without the TPU.

  python -m mvm_jax.tools.aot_compile --config configs/mae_st.py:vit_l --topology v5p-128 \\
      [--config.mesh.shape='(8,8,1)'] [--per_device_batch 8] [--json]
  python -m mvm_jax.tools.aot_compile --config configs/mae_st.py:tiny --topology cpu-8

Builds the step `python -m mvm_jax.main` runs (`loop.abstract_experiment`: the same model,
mask policy, objectives, optimizer, shardings and donation) on abstract inputs
(`jax.ShapeDtypeStruct`s carrying their shardings: nothing is allocated), lowers and compiles
it for the named topology and prints one table: devices and mesh, per-device memory from
XLA's `memory_analysis()` against the chip's HBM, model FLOPs per step (`loop.step_flops`:
no remat recomputation, the whole batch), the compiled step's FLOPs per step and per device
(cost analysis: with remat, the recomputation too), compile time, and the collectives in the
compiled HLO by kind (count and bytes per device). The compiled counts take a loop body once:
with `optim.grad_accum_steps > 1` the micro-batch loop's FLOPs and collectives are counted for
one micro-batch. `--json` prints the same as
one JSON object; progress lines go to stderr.

Topologies: TPU slices `v4-N`, `v5p-N` (N TensorCores, 2 a chip: N/2 devices), `v5e-N`,
`v6e-N` (N chips), one slice, compiled by libtpu's compiler on this machine's CPU
(`pip install -e '.[tpu]'`; no TPU needed). Without libtpu, and for `cpu-N`, the step
compiles for N fake CPU devices (a TPU name gives its device count): mesh, FLOPs and
collectives still hold; memory is what the CPU compiler plans, and there is no HBM to
compare against. A TPU compile that does not fit in HBM fails as on the hardware: the
table then says so (exit status 1).

`config.batch_size` is the global batch, as in training; `--per_device_batch B` sets it to
B × the data-parallel devices of the mesh (data × fsdp) instead. Before compiling, every
parameter of at least `--min_sharded_size` elements must be split over the `fsdp` mesh
axis when that axis has more than one device (`unsharded_parameters`): a parameter
replicated by mistake costs its full size (with Adam's moments, 3×) on every device.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import sys
import time
from typing import Any, Optional

from absl import app, flags
from ml_collections import config_flags

from mvm_jax import console

GIB = 2.0**30
COLLECTIVE_KINDS = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute')
# HBM per device (a chip; v4 and v5p run their two TensorCores as one megacore device).
TPU_GENERATIONS = {
  # name: (jax topology prefix, TensorCores counted per chip in the name, mesh dims, chip config, HBM GiB)
  'v4': ('v4', 2, 3, 'megacore', 32.0),
  'v5p': ('v5', 2, 3, 'megacore', 95.0),
  'v5e': ('v5e', 1, 2, 'default', 16.0),
  'v6e': ('v6e', 1, 2, 'default', 32.0),
}
DEFAULT_MIN_SHARDED_SIZE = 2**20


class UnshardedParametersError(ValueError):
  """Large parameters are replicated over the fsdp axis; the message names them."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """What to compile for: `num_devices` (all slices) of `platform`, HBM per device (None: CPU)."""

  name: str
  platform: str  # 'tpu' or 'cpu'
  num_devices: int
  hbm_bytes: Optional[float] = None
  topology_name: str = ''  # jax's, e.g. 'v5:4x4x4'
  chip_config_name: str = 'default'
  chips_per_host_bounds: tuple[int, ...] = ()
  wrap: tuple[bool, ...] = ()


def _chip_grid(chips: int, ndim: int) -> tuple[int, ...]:
  """Chip layout of a slice: a host's 2×2(×1), then the smallest dimension doubled (the last of
  equals) until it holds `chips`: 3-D 16 → 2×2×4, 64 → 4×4×4, 128 → 4×4×8; 2-D 64 → 8×8, 256 → 16×16."""
  if chips < 4 or chips & (chips - 1):
    raise ValueError(f'{chips} chips: slices of 4, 8, 16, ... chips (a power of two) are supported')
  dims = [2, 2] + [1] * (ndim - 2)
  while dims[0] * dims[1] * (dims[2] if ndim == 3 else 1) < chips:
    smallest = min(dims)
    last = max(i for i, d in enumerate(dims) if d == smallest)
    dims[last] *= 2
  return tuple(dims)


def parse_topology(name: str) -> Topology:
  """'v5p-128' (TensorCores, as Cloud TPU names v4/v5p slices), 'v5e-256' / 'v6e-256' (chips),
  or 'cpu-8' (fake CPU devices) → Topology."""
  match = re.fullmatch(r'(v4|v5p|v5e|v5litepod|v6e|cpu)-(\d+)', name)
  if not match:
    raise ValueError(
      f'--topology={name!r}: expected v4-N, v5p-N, v5e-N, v6e-N or cpu-N (e.g. v5p-128, cpu-8)'
    )
  family, n = match.group(1), int(match.group(2))
  if family == 'cpu':
    return Topology(name=name, platform='cpu', num_devices=n)
  family = 'v5e' if family == 'v5litepod' else family
  prefix, cores_per_chip, ndim, chip_config, hbm_gib = TPU_GENERATIONS[family]
  if n % cores_per_chip:
    raise ValueError(f'--topology={name!r}: {family} slices count {cores_per_chip} TensorCores a chip')
  chips = n // cores_per_chip
  grid = _chip_grid(chips, ndim)
  if ndim == 3:
    wrap = (min(grid) >= 4,) * 3  # a full 4×4×4 cube or more is a torus in every dimension
  else:
    wrap = (grid == (16, 16),) * 2 + (False,)  # a full 16×16 pod wraps
  return Topology(
    name=name,
    platform='tpu',
    num_devices=chips,
    hbm_bytes=hbm_gib * GIB,
    topology_name=f'{prefix}:{"x".join(map(str, grid))}',
    chip_config_name=chip_config,
    chips_per_host_bounds=(2, 2, 1),
    wrap=wrap,
  )


def libtpu_available() -> bool:
  """libtpu is installed (the `tpu` extra) or TPU_LIBRARY_PATH names its .so; nothing is loaded."""
  path = os.environ.get('TPU_LIBRARY_PATH')
  return bool(path and os.path.isfile(path)) or importlib.util.find_spec('libtpu') is not None


def cpu_fallback(topology: Topology) -> Topology:
  """The same device count as fake CPU devices (no HBM)."""
  return Topology(name=f'cpu-{topology.num_devices}', platform='cpu', num_devices=topology.num_devices)


def configure_jax(topology: Topology) -> None:
  """Before JAX's backends start: CPU only (a TPU topology is compiled for, never run on; this also
  keeps a TPU VM's chips free), with N CPU devices for cpu-N (what
  `--xla_force_host_platform_device_count=N` in XLA_FLAGS does, arranged here by the tool). For a
  TPU topology, the environment libtpu would otherwise look up from a TPU VM's metadata server
  (off a TPU VM it logs errors about it): the slice we compile for, on this one host; and no
  libtpu lock file, which lets one compile run beside another (or beside training)."""
  import jax

  jax.config.update('jax_platforms', 'cpu')
  if topology.platform == 'cpu':
    try:
      jax.config.update('jax_num_cpu_devices', topology.num_devices)
    except RuntimeError:  # backends already started: topology_devices says if there are too few
      pass
  else:
    accelerator = topology.name.replace('v5e-', 'v5litepod-')
    for key, value in (
      ('TPU_SKIP_MDS_QUERY', '1'),
      ('TPU_ACCELERATOR_TYPE', accelerator),
      ('TPU_WORKER_HOSTNAMES', 'localhost'),
      ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1'),  # compiles side by side; each would take /tmp/libtpu_lockfile
    ):
      os.environ.setdefault(key, value)


def topology_devices(topology: Topology) -> list:
  """The devices to build the mesh from: compile-only TPU devices of the topology (libtpu), or the
  first N CPU devices."""
  import jax

  if topology.platform == 'tpu':
    from jax.experimental import topologies

    return list(
      topologies.get_topology_desc(
        platform='tpu',
        topology_name=topology.topology_name,
        chip_config_name=topology.chip_config_name,
        chips_per_host_bounds=topology.chips_per_host_bounds,
        num_slices=1,
        wrap=topology.wrap,
      ).devices
    )
  devices = jax.devices('cpu')
  if len(devices) < topology.num_devices:
    raise ValueError(
      f'--topology={topology.name} needs {topology.num_devices} CPU devices, JAX has {len(devices)} '
      f'(its backend started before the tool could ask for more: set '
      f'XLA_FLAGS=--xla_force_host_platform_device_count={topology.num_devices})'
    )
  return devices[: topology.num_devices]


def with_per_device_batch(config, per_device_batch: int, num_devices: int):
  """A copy of `config` whose batch_size is `per_device_batch` × the mesh's data-parallel devices."""
  from mvm_jax import sharding

  config = config.copy_and_resolve_references()
  shape = dict(zip(config.mesh.axes, sharding.resolve_mesh_shape(config.mesh.shape, num_devices)))
  dp = 1
  for axis in sharding.BATCH_AXES:
    dp *= shape.get(axis, 1)
  config.batch_size = per_device_batch * dp
  return config


def abstract_batch(config, batch_sharding) -> dict:
  """ShapeDtypeStructs of the batch the train loader yields (carrying `batch_sharding`): pixels
  {'video': uint8 [B, *sample_shape], 'label': i32 [B], 'index': i32 [B]} (sample_shape per
  `data.sampling`: [T, S, S, 3], pairs [2, T, S, S, 3] or [2, 1, S, S, 3]); for token data
  {'tokens': i32 [B, (2,) T, h, w], ...}."""
  import jax
  import jax.numpy as jnp

  from mvm_jax.data import pipeline

  b = config.batch_size
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
  batch = {'label': sds((b,), jnp.int32), 'index': sds((b,), jnp.int32)}
  if config.data.source == 'tokens':
    from mvm_jax.methods import vimpac

    views = (2,) if config.data.sampling == 'clip_pair' else ()
    batch['tokens'] = sds((b, *views, *vimpac.token_shape(config)), jnp.int32)
  else:
    sample_shape = pipeline.make_sampler(config.data, train=True).sample_shape
    batch['video'] = sds((b, *sample_shape), jnp.uint8)
  return batch


def unsharded_parameters(
  params, shardings, mesh, min_size: int = DEFAULT_MIN_SHARDED_SIZE, axis: str = 'fsdp'
):
  """[(name, shape, PartitionSpec)] of the parameters with at least `min_size` elements that are
  not split over mesh axis `axis`; [] when the mesh has no such axis or it has one device."""
  import jax

  if mesh.shape.get(axis, 1) <= 1:
    return []
  found = []
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  for (path, x), sharding in zip(leaves, jax.tree.leaves(shardings)):
    spec = sharding.spec
    used = {
      a for entry in spec if entry is not None for a in (entry if isinstance(entry, tuple) else (entry,))
    }
    if x.size >= min_size and axis not in used:
      name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
      found.append((name, tuple(x.shape), spec))
  return found


def check_sharding(exp, min_size: int = DEFAULT_MIN_SHARDED_SIZE) -> None:
  """Raise UnshardedParametersError naming the parameters `unsharded_parameters` finds."""
  found = unsharded_parameters(exp.abstract_state.params, exp.state_shardings.params, exp.mesh, min_size)
  if found:
    lines = '\n'.join(f'  {name} {shape} sharded as {spec}' for name, shape, spec in found)
    raise UnshardedParametersError(
      f'{len(found)} parameter(s) of >= {min_size} elements are not sharded over the fsdp axis '
      f'({exp.mesh.shape["fsdp"]} devices), so every device holds them whole:\n{lines}\n'
      f'Give their axes logical names that config.mesh.rules maps to fsdp, '
      f'or raise --min_sharded_size.'
    )


_INSTRUCTION = re.compile(r'^\s+(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s+(?P<op>[a-z][a-z0-9\-]*)\(')
_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*?(?:->\s*(?P<result>.*))?\{\s*$')
_ARRAY = re.compile(r'\b(pred|[a-z]+[0-9]*(?:e[0-9]+m[0-9]+[a-z]*)?)\[([0-9,]*)\]')
_DTYPE_BITS = {'pred': 8, 'c64': 64, 'c128': 128}


def _array_bytes(dtype: str, dims: str) -> float:
  bits = _DTYPE_BITS.get(dtype)
  if bits is None:
    found = re.search(r'[0-9]+', dtype)
    bits = int(found.group()) if found else 32
  n = 1
  for d in filter(None, dims.split(',')):
    n *= int(d)
  return n * bits / 8


def _type_bytes(hlo_type: str) -> float:
  return sum(_array_bytes(d, s) for d, s in _ARRAY.findall(hlo_type))


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
  """{kind: {'count', 'bytes'}} of the collectives in a compiled HLO module's text
  (`COLLECTIVE_KINDS`), each op once (async `-start` counted, `-done` not; a loop body once).

  Bytes are each op's result on one device: the reduced, gathered, scattered or received
  arrays. TPU compiles a reduce-scatter as an all-reduce fused with the slicing
  (a computation named all-reduce-scatter*): counted as a reduce-scatter of the fusion's result.
  """
  out = {kind: {'count': 0, 'bytes': 0.0} for kind in COLLECTIVE_KINDS}
  computation, computation_result = '', ''
  for line in hlo_text.splitlines():
    header = None if line[:1].isspace() else _COMPUTATION.match(line)
    if header:
      computation, computation_result = header.group('name'), header.group('result') or ''
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    op = m.group('op')
    kind = op[: -len('-start')] if op.endswith('-start') else op
    kind = 'all-to-all' if kind == 'ragged-all-to-all' else kind
    if kind not in out:
      continue
    arrays = _ARRAY.findall(m.group('type'))
    if op.endswith('-start'):
      arrays = [(d, s) for d, s in arrays if s]  # without the scalar u32[] contexts of async ops
      if kind in ('all-gather', 'collective-permute'):
        arrays = arrays[len(arrays) // 2 :]  # (operands, results): the results
    size = sum(_array_bytes(d, s) for d, s in arrays)
    if kind == 'all-reduce' and computation.startswith('all-reduce-scatter'):
      kind, size = 'reduce-scatter', _type_bytes(computation_result)
    out[kind]['count'] += 1
    out[kind]['bytes'] += size
  return out


def _first_cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def _is_out_of_memory(error: Exception) -> bool:
  message = str(error).lower()
  return (
    'resource_exhausted' in message
    or 'out of memory' in message
    or ('exceeds' in message and 'hbm' in message)
  )


def abstract_step(config, devices, *, samples_per_epoch: Optional[int] = None):
  """(exp, batch): `loop.abstract_experiment` on a mesh of `devices` per `config.mesh`, and the
  abstract batch (the entries the step reads); `exp.train_step.lower(exp.abstract_state, batch)` lowers the step
  `main` runs.
  `samples_per_epoch` (default: 1000 batches) only sets the schedule's length."""
  from mvm_jax import sharding
  from mvm_jax.train import loop

  mesh = sharding.make_mesh(config.mesh, devices)
  samples_per_epoch = samples_per_epoch or config.batch_size * 1000
  exp = loop.abstract_experiment(config, mesh, samples_per_epoch=samples_per_epoch)
  batch = abstract_batch(config, exp.batch_sharding)
  return exp, {k: v for k, v in batch.items() if exp.batch_keys is None or k in exp.batch_keys}


def aot_compile(
  config,
  topology: Topology,
  devices,
  *,
  samples_per_epoch: Optional[int] = None,
  min_sharded_size: int = DEFAULT_MIN_SHARDED_SIZE,
  progress=None,
) -> dict:
  """Build the train step on a mesh of `devices` with abstract inputs (`abstract_step`), check
  its sharding (`check_sharding`), compile it; the report `format_table` prints.
  `progress(str)` gets a line per stage."""
  import jax

  from mvm_jax import sharding
  from mvm_jax.train import loop
  from mvm_jax.train import state as state_lib

  say = progress or (lambda line: None)
  say(
    f'Building the train step for {len(devices)} {topology.name} devices, mesh {tuple(config.mesh.shape)}...'
  )
  exp, batch = abstract_step(config, devices, samples_per_epoch=samples_per_epoch)
  mesh = exp.mesh
  check_sharding(exp, min_sharded_size)
  dp = sharding.data_parallel_size(mesh)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(exp.abstract_state))
  result: dict[str, Any] = {
    'topology': topology.name,
    'platform': topology.platform,
    'num_devices': len(devices),
    'device_kind': devices[0].device_kind,
    'mesh': {k: int(v) for k, v in mesh.shape.items()},
    'batch_size': config.batch_size,
    'per_device_batch': config.batch_size / dp,
    'grad_accum_steps': config.optim.grad_accum_steps,
    'params': state_lib.param_count(exp.abstract_state.params),
    'state_bytes': state_bytes,
    'hbm_bytes': topology.hbm_bytes,
    'fits': None,
    'error': None,
  }
  say('Lowering...')
  start = time.perf_counter()
  with sharding.sharding_context(mesh, config.mesh.rules):
    lowered = exp.train_step.lower(exp.abstract_state, batch)
  result['lower_s'] = time.perf_counter() - start
  # The whole mesh's model FLOPs: the lowered step's own count, or a CPU twin's where that is not them.
  result['model_flops_per_step'] = loop.step_flops(exp, lowered, batch) * mesh.size
  say(f'Compiling for {topology.name} (a ViT-L on a pod slice takes minutes on a few CPU cores)...')
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except Exception as e:  # noqa: BLE001: XLA's runtime error type is private
    if not _is_out_of_memory(e):
      raise
    result.update(fits=False, error=str(e).strip().splitlines()[0], compile_s=time.perf_counter() - start)
    return result
  result['compile_s'] = time.perf_counter() - start
  mem = compiled.memory_analysis()
  memory = {
    'arguments': mem.argument_size_in_bytes,
    'outputs': mem.output_size_in_bytes,
    'aliased': mem.alias_size_in_bytes,
    'temporaries': mem.temp_size_in_bytes,
    'generated_code': mem.generated_code_size_in_bytes,
  }
  memory['total'] = (
    memory['arguments']
    + memory['outputs']
    - memory['aliased']
    + memory['temporaries']
    + memory['generated_code']
  )
  cost = _first_cost(compiled)
  result.update(
    memory=memory,
    flops_per_device=float(cost.get('flops', 0.0)),
    flops_per_step=float(cost.get('flops', 0.0)) * len(devices),
    bytes_accessed_per_device=float(cost.get('bytes accessed', 0.0)),
    collectives=collectives(compiled.as_text()),
  )
  if topology.hbm_bytes:
    result['hbm_fraction'] = memory['total'] / topology.hbm_bytes
    result['fits'] = memory['total'] <= topology.hbm_bytes
  return result


def format_table(result: dict, label: str = '') -> str:
  r = result
  mesh = ' × '.join(f'{k} {v}' for k, v in r['mesh'].items())
  hbm = f'{r["hbm_bytes"] / GIB:.1f} GiB' if r['hbm_bytes'] else 'n/a'
  lines = [
    f'{label + " on " if label else ""}{r["topology"]}: {r["num_devices"]}× {r["device_kind"]}, mesh {mesh}',
    f'batch {r["batch_size"]} ({r["per_device_batch"]:g} per data-parallel device'
    f'{", " + str(r["grad_accum_steps"]) + " micro-batches" if r["grad_accum_steps"] > 1 else ""}), '
    f'{r["params"] / 1e6:.1f}M parameters, train state {r["state_bytes"] / GIB:.2f} GiB in all',
    f'{"compile (lower + compile)":<34}{r["lower_s"] + r["compile_s"]:>10.1f} s',
  ]
  if r['fits'] is False and r['error']:
    lines += [f'DOES NOT FIT in {hbm} HBM per device: {r["error"]}']
    return '\n'.join(lines)
  m = r['memory']
  unit, scale = ('GiB', GIB) if m['total'] >= GIB else ('MiB', 2.0**20)
  lines.append(f'{"memory per device (XLA)":<34}{unit:>10}')
  for key, name in (
    ('arguments', 'arguments (state + batch)'),
    ('outputs', 'outputs'),
    ('aliased', 'aliased (donated state)'),
    ('temporaries', 'temporaries'),
    ('generated_code', 'generated code'),
  ):
    sign = -1 if key == 'aliased' else 1
    lines.append(f'  {name:<32}{sign * m[key] / scale:>10.2f}')
  fraction = f' ({r["hbm_fraction"]:.0%} of {hbm} HBM)' if r['hbm_bytes'] else ' (HBM n/a)'
  fraction += ': DOES NOT FIT' if r['fits'] is False else ''
  lines.append(f'  {"total":<32}{m["total"] / scale:>10.2f}{fraction}')
  lines += [
    f'{"model FLOPs per step (2/MAC)":<34}{r["model_flops_per_step"]:>10.3e}',
    f'{"compiled FLOPs per step":<34}{r["flops_per_step"]:>10.3e}',
    f'{"compiled FLOPs per device":<34}{r["flops_per_device"]:>10.3e}',
    f'{"collectives in the HLO":<34}{"count":>10}{"MiB/device":>12}',
  ]
  if r['grad_accum_steps'] > 1:
    lines.insert(
      -2, f'  (XLA counts the {r["grad_accum_steps"]} micro-batches\' loop body once: compiled FLOPs are low)'
    )
  for kind, c in r['collectives'].items():
    lines.append(f'  {kind:<32}{c["count"]:>10}{c["bytes"] / 2**20:>12.1f}')
  return '\n'.join(lines)


def _devices_or_cpu_fallback(topology: Topology, say) -> tuple[Topology, list]:
  """(topology, devices) after `configure_jax`: the TPU topology's compile-only devices, else (no
  libtpu, or libtpu fails to make the topology: the error is shown) as many fake CPU devices."""
  if topology.platform == 'tpu' and not libtpu_available():
    say(
      f'libtpu is not installed (pip install -e ".[tpu]"): compiling for CPU devices instead of {topology.name}.'
    )
    topology = cpu_fallback(topology)
  configure_jax(topology)
  if topology.platform == 'tpu':
    try:
      return topology, topology_devices(topology)
    except Exception as e:  # noqa: BLE001: XLA's runtime error type is private
      say(f'libtpu could not make the {topology.name} topology ({e}); compiling for CPU devices instead.')
      topology = cpu_fallback(topology)
      configure_jax(topology)
  return topology, topology_devices(topology)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from mvm_jax import config as config_lib

  f = flags.FLAGS
  say = lambda line: print(line, file=sys.stderr, flush=True)
  try:
    topology, devices = _devices_or_cpu_fallback(parse_topology(f.topology), say)
    config = f.config
    if f.per_device_batch > 0:
      config = with_per_device_batch(config, f.per_device_batch, len(devices))
    config_lib.validate(config)  # once, here (after jax is configured: checks may look at devices)
    result = aot_compile(config, topology, devices, min_sharded_size=f.min_sharded_size, progress=say)
  except (config_lib.ConfigError, UnshardedParametersError, ValueError) as e:
    say(f'Error: {e}')
    sys.exit(2)
  label = config_flags.get_config_filename(f['config'])
  print(json.dumps(result) if f.json else format_table(result, label))
  if result['fits'] is False:
    sys.exit(1)


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_string(
    'topology', None, 'v4-N, v5p-N, v5e-N, v6e-N (TPU slice) or cpu-N (N fake CPU devices).'
  )
  flags.DEFINE_integer(
    'per_device_batch',
    0,
    '> 0: batch_size = this × data-parallel devices (data × fsdp); else config.batch_size.',
  )
  flags.DEFINE_integer(
    'min_sharded_size',
    DEFAULT_MIN_SHARDED_SIZE,
    'Parameters of at least this many elements must be fsdp-sharded.',
  )
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config', 'topology'])
  app.run(main, flags_parser=console.parse_flags)
