"""Device mesh from config, and sharding by logical axis names.

Model code names array axes ('batch', 'embed', 'mlp', ...); `LOGICAL_RULES`
maps those names onto mesh axes. The same code then runs on 1 CPU device, 8
fake CPU devices, a GPU node or a TPU pod.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Data parallel over ('data', 'fsdp'); parameters' model dimension over 'fsdp'
# (ZeRO-3 style); MLP hidden and attention heads over 'tensor'.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('length', None),
)
BATCH_AXES = ('data', 'fsdp')


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replace a single -1 by the remaining device count; check the product."""
  shape = [int(s) for s in shape]
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise ValueError(
        f'config.mesh.shape={tuple(shape)}: {num_devices} devices are not divisible by {known}'
      )
    shape[shape.index(-1)] = num_devices // known
  if int(np.prod(shape)) != num_devices:
    raise ValueError(
      f'config.mesh.shape={tuple(shape)} needs {int(np.prod(shape))} devices, {num_devices} are available'
    )
  return tuple(shape)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A Mesh with axes from `config.mesh` over the given devices, else over all
  devices (or the first prod(shape) of them when the shape has no -1)."""
  if devices is None:
    devices = jax.devices()
    if -1 not in mesh_config.shape:
      devices = devices[: int(np.prod(mesh_config.shape))]
  shape = resolve_mesh_shape(mesh_config.shape, len(devices))
  axes = tuple(mesh_config.axes)
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  return jax.make_mesh(shape, axes, axis_types=auto, devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.shape]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data-parallel axes; the rest replicated."""
  return NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if a in mesh.shape)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def rules_for(mesh: Mesh) -> tuple:
  """LOGICAL_RULES restricted to the axes this mesh has."""

  def keep(target):
    if target is None:
      return None
    if isinstance(target, str):
      return target if target in mesh.shape else None
    kept = tuple(t for t in target if t in mesh.shape)
    return kept or None

  return tuple((name, keep(target)) for name, target in LOGICAL_RULES)


@contextlib.contextmanager
def sharding_context(mesh: Mesh):
  """Mesh + logical rules active while tracing model code."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for(mesh)):
    yield


def logical_to_sharding(boxed_tree, mesh: Mesh):
  """Tree with LogicallyPartitioned leaves (e.g. from `jax.eval_shape(model.init)`)
  → tree of NamedSharding; unboxed leaves are replicated."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_for(mesh))
