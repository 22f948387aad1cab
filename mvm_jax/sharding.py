"""Device mesh from config, and sharding by logical axis names.

Model code names array axes: parameters by 'embed', 'mlp', 'heads', 'vocab'
(or None), activation constraints by 'act_batch', 'act_length', 'act_embed'.
`config.mesh.rules` (defaults: `DEFAULT_RULES`) maps each name onto mesh
axes, so the same code runs on 1 CPU device, 8 fake CPU devices, a GPU node
or a TPU pod. Every name an array uses must have a rule, every mesh axis a
rule names must be in `config.mesh.axes`, and two names of one array may
not share a mesh axis: each of these is an error naming `config.mesh.rules`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# The input batch (leading axis) is split over these mesh axes.
BATCH_AXES = ('data', 'fsdp')

# Logical axis name -> the mesh axes (a tuple; () = replicated) its array dimension is split over:
# data parallel over ('data', 'fsdp'); parameters' model dimension over 'fsdp' (ZeRO-3 style);
# MLP hidden and attention heads over 'tensor'. `base_config()` copies it into config.mesh.rules.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
  # Parameters.
  ('embed', ('fsdp',)),  # the model dimension D of weights, biases, LN scales, embeddings
  ('mlp', ('tensor',)),  # the MLP hidden dimension (and the projection heads' hidden)
  ('heads', ('tensor',)),  # the attention heads × head dim of q/k/v/proj kernels
  ('vocab', ()),  # token-embedding rows and logit biases (VIMPAC): replicated on purpose
  ('layers', ()),  # the stacked block axis of model.scan_blocks (nn.scan): every device holds all layers
  # Activations (`nn.with_logical_constraint` on the block inputs [B, N, D] / [B, T, h, w, D]).
  ('act_batch', BATCH_AXES),  # as the input batch
  ('act_length', ()),  # tokens: replicated
  # Features: replicated. The parameters' 'embed' -> fsdp must not apply here: fsdp already
  # splits the batch (this is what the former shared name 'embed' resolved to as well).
  ('act_embed', ()),
)

# A rule's target as config holds it: a tuple of mesh axes; a single name or None (= ()) is
# accepted too, and None entries are dropped (`--config.mesh.rules.mlp=None` gives (None,)).
Target = Union[None, str, Sequence[Optional[str]]]
# Resolved rules, as flax's `nn.logical_axis_rules` takes them: (name, None | axis | (axes...)).
Rules = tuple[tuple[str, Any], ...]


class RuleError(ValueError):
  """A sharding rule is invalid; `name` is its logical axis name (None: the rules as a whole)."""

  def __init__(self, name: Optional[str], reason: str):
    self.name, self.reason = name, reason
    super().__init__(f'config.mesh.rules{"" if name is None else "." + name}: {reason}')


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


def _rule_axes(name: str, target: Target) -> tuple[str, ...]:
  if target is None:
    return ()
  if isinstance(target, str):
    target = (target,)
  if not isinstance(target, (tuple, list)) or not all(a is None or isinstance(a, str) for a in target):
    raise RuleError(name, f'{target!r} is not a tuple of mesh axis names (or None)')
  axes = tuple(a for a in target if a is not None)
  if len(set(axes)) != len(axes):
    raise RuleError(name, f'{target!r} names a mesh axis twice')
  return axes


def resolve_rules(rules: Union[Mapping[str, Target], Rules], mesh_axes: Sequence[str]) -> Rules:
  """`config.mesh.rules` ({logical name: mesh axes}, or (name, axes) pairs) → the rules flax
  takes, each target None (replicated), one axis name or a tuple of them.

  Raises:
    RuleError: a target is not a tuple of names, or names a mesh axis `mesh_axes` lacks.
  """
  items = rules.items() if hasattr(rules, 'items') else rules  # a dict or a ConfigDict
  resolved = []
  for name, target in items:
    axes = _rule_axes(name, target)
    missing = [a for a in axes if a not in mesh_axes]
    if missing:
      raise RuleError(
        name, f'{tuple(axes)} names mesh axes {missing} that config.mesh.axes={tuple(mesh_axes)} lacks'
      )
    resolved.append((name, axes[0] if len(axes) == 1 else (axes or None)))
  return tuple(resolved)


def rules_for(mesh: Mesh, rules) -> Rules:
  """`resolve_rules` for the axes of `mesh`."""
  return resolve_rules(rules, mesh.axis_names)


def mesh_spec(names: Sequence[Optional[str]], rules: Rules) -> P:
  """The PartitionSpec of an array whose axes have logical `names` (None: replicated), by
  resolved `rules`: one entry per axis.

  Raises:
    RuleError: a name has no rule, or two names share a mesh axis.
  """
  table = dict(rules)
  entries, owner = [], {}
  for name in names:
    if name is None:
      entries.append(None)
      continue
    if name not in table:
      raise RuleError(
        None,
        f'no rule for the logical axis name {name!r} (of an array with axes {tuple(names)}); '
        f'rules exist for {sorted(table)} (defaults: sharding.DEFAULT_RULES)',
      )
    target = table[name]
    for axis in (target,) if isinstance(target, str) else target or ():
      if axis in owner:
        raise RuleError(
          None,
          f'logical axes {owner[axis]!r} and {name!r} of an array with axes {tuple(names)} '
          f'both map to mesh axis {axis!r}',
        )
      owner[axis] = name
    entries.append(target)
  return P(*entries)


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules):
  """Mesh + logical rules (`config.mesh.rules`) active while tracing model code."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for(mesh, rules)):
    yield


def constrain(x, names: Sequence[Optional[str]]):
  """`nn.with_logical_constraint(x, names)` by the active rules (a no-op outside
  `sharding_context`), after checking every name has a rule (`mesh_spec`)."""
  rules = nn.get_logical_axis_rules()
  if rules:
    mesh_spec(names, rules)
  return nn.with_logical_constraint(x, tuple(names))


def logical_to_sharding(boxed_tree, mesh: Mesh, rules):
  """Tree with LogicallyPartitioned leaves (e.g. from `jax.eval_shape(model.init)`)
  → tree of NamedSharding by `rules` (`config.mesh.rules`); unboxed leaves are replicated.

  Raises:
    RuleError: a rule is invalid for `mesh`, or a leaf's axis name has none (`mesh_spec`).
  """
  resolved = rules_for(mesh, rules)
  specs = nn.get_partition_spec(boxed_tree)
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, mesh_spec(tuple(spec), resolved)),
    specs,
    is_leaf=lambda x: isinstance(x, P),
  )
