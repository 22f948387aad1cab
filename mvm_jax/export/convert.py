"""Flax params <-> PyTorch state_dicts (numpy arrays), by the tables of `names`.

Both directions are pure numpy: no PyTorch needed here. Exact layouts (copy,
transpose, fuse/split) round-trip bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.traverse_util
import numpy as np

from mvm_jax.export import names


class StateDictMismatch(ValueError):
  """A state_dict does not fit the target params; lists every problem at once."""

  def __init__(self, fmt: str, missing: list[str], unexpected: list[str], mismatched: list[tuple]):
    self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
    lines = [f'the state_dict does not fit the target model (format {fmt!r}):']
    if missing:
      lines.append(f'  missing keys ({len(missing)}): {", ".join(missing)}')
    if unexpected:
      lines.append(f'  unexpected keys ({len(unexpected)}): {", ".join(unexpected)}')
    for key, want, got in mismatched:
      lines.append(f'  shape mismatch: {key}: expected {want}, got {got}')
    super().__init__('\n'.join(lines))


def to_state_dict(
  params: Any, fmt: str, grid: Sequence[int] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Flax params → ({PyTorch key: numpy array}, notes), keys in model order.

  Args:
    params: nested Flax params ({'encoder': ..., 'decoder': ...} of
      `MaskedAutoencoder`, {'encoder', 'fc_norm', 'head'} of `VideoClassifier`,
      or {'encoder': ...}).
    fmt: one of `names.FORMATS`.
    grid: token grid (T', H', W'); only needed for sin-cos position embeddings.
  """
  flat = flax.traverse_util.flatten_dict(params)
  table = names.rules({k: np.shape(v) for k, v in flat.items()}, fmt, grid)
  state_dict = {}
  for rule in table.rules:
    state_dict[rule.torch_key] = np.ascontiguousarray(names.to_torch(rule, [flat[p] for p in rule.flax]))
  return state_dict, table.notes


def from_state_dict(
  state_dict: Mapping[str, np.ndarray],
  target: Any,
  fmt: str,
  grid: Sequence[int] | None = None,
  ignore: Iterable[str] = (),
) -> tuple[dict, list[str]]:
  """PyTorch state_dict → (nested Flax params shaped like `target`, notes).

  Args:
    state_dict: {key: array-like} in format `fmt`.
    target: nested params or ShapeDtypeStructs of the model to fill (gives
      names, shapes and dtypes; values are cast to the target dtypes).
    fmt: one of `names.FORMATS`.
    grid: token grid (T', H', W'); only needed for sin-cos position embeddings.
    ignore: key prefixes of the state_dict to skip on purpose (e.g. 'head.').

  Raises:
    StateDictMismatch: listing all missing keys, unexpected keys and shape
      mismatches together.
  """
  flat_target = flax.traverse_util.flatten_dict(target)
  shapes = {k: tuple(v.shape) for k, v in flat_target.items()}
  table = names.rules(shapes, fmt, grid)
  ignore = tuple(ignore)
  const = {r.torch_key for r in table.rules if r.layout == names.CONST}
  wanted = {r.torch_key: r for r in table.rules if r.layout != names.CONST}
  missing = [k for k in wanted if k not in state_dict]
  unexpected = [k for k in state_dict if k not in wanted and k not in const and not k.startswith(ignore)]
  mismatched = []
  for key, rule in wanted.items():
    if key in state_dict:
      want = names.torch_shape(rule, [shapes[p] for p in rule.flax])
      got = tuple(np.shape(state_dict[key]))
      if want != got:
        mismatched.append((key, want, got))
  if missing or unexpected or mismatched:
    raise StateDictMismatch(fmt, missing, unexpected, mismatched)

  flat = {}
  for key, rule in wanted.items():
    leaves = names.to_flax(rule, np.asarray(state_dict[key]), [shapes[p] for p in rule.flax])
    for path, value in zip(rule.flax, leaves):
      flat[path] = np.ascontiguousarray(value).astype(flat_target[path].dtype, copy=False)
  notes = [f'{r.torch_key}: {r.note}' for r in table.rules if r.note and r.torch_key in state_dict]
  for prefix in ignore:
    skipped = [k for k in state_dict if k.startswith(prefix) and k not in wanted]
    if skipped:
      notes.append(f'{prefix}*: {len(skipped)} key(s) not used by this model, skipped')
  return flax.traverse_util.unflatten_dict(flat), notes


def summary(arrays: Mapping[str, Any], title: str = '') -> str:
  """Key-by-key table (name, shape, dtype) and totals of tensors, parameters and bytes."""
  rows = [(k, str(tuple(np.shape(v))), str(np.asarray(v).dtype)) for k, v in arrays.items()]
  width = max([len(r[0]) for r in rows] + [4])
  shape_width = max([len(r[1]) for r in rows] + [5])
  lines = [title] if title else []
  lines.append(f'{"name":<{width}}  {"shape":<{shape_width}}  dtype')
  lines += [f'{k:<{width}}  {s:<{shape_width}}  {d}' for k, s, d in rows]
  count = sum(int(np.size(v)) for v in arrays.values())
  nbytes = sum(np.asarray(v).nbytes for v in arrays.values())
  lines.append(f'total: {len(rows)} tensors, {count:,} parameters, {nbytes / 2**20:.2f} MiB')
  return '\n'.join(lines)


def flat_names(params: Any) -> dict[str, Any]:
  """Nested params → {'a/b/c': leaf} (for `summary` of a Flax tree)."""
  return flax.traverse_util.flatten_dict(params, sep='/')
