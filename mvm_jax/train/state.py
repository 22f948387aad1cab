"""Train state and its sharded initialisation."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mvm_jax import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; saved whole in checkpoints.

  `rng` is the run's base key; step t uses fold_in(rng, t), so resuming at
  step t draws exactly the masks and dropout an uninterrupted run would.
  `model_state` holds the model's non-parameter collections (e.g.
  {'batch_stats': ...} of BatchNorm projectors; {} when it has none).
  `teacher` is an exponential moving average of `params` (HPM's teacher),
  sharded like them; {} when the method has no teacher. `frozen` holds
  variables the step reads but never trains (VIMPAC's tokenizer when it
  tokenizes on the fly), replicated; {} when none. Checkpoints leave it out
  (`without_frozen`): it is loaded from its own source on every start.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any = flax.struct.field(default_factory=dict)
  teacher: Any = flax.struct.field(default_factory=dict)
  frozen: Any = flax.struct.field(default_factory=dict)

  def without_frozen(self) -> TrainState:
    return self.replace(frozen={})


def abstract_sharded_state(
  init_variables: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh,
  *,
  rules,
  ema_teacher: bool = False,
  frozen: Any = None,
) -> tuple[TrainState, TrainState]:
  """The state's shapes and shardings, with nothing allocated (nothing runs).

  `init_variables(rng)` returns Flax variables {'params': ..., other
  collections...} (as `model.init`) whose leaves may be LogicallyPartitioned
  (they name their axes); those names pick each leaf's sharding by `rules`
  (`config.mesh.rules`: logical name -> mesh axes). Optimizer
  moments and the EMA teacher (`ema_teacher=True`: starts equal to the
  params) follow their parameter; scalars (step, Adam's count) and `frozen`
  are replicated. Returns (abstract_state, state_shardings): the first a
  TrainState of `jax.ShapeDtypeStruct`s carrying those shardings (what
  `jax.jit(...).lower` takes for ahead-of-time compilation, or orbax for a
  sharded restore), exactly the shapes `init_sharded_state` makes.
  """
  with sharding.sharding_context(mesh, rules):
    rng = jax.eval_shape(jax.random.PRNGKey, 0)
    boxed_variables = jax.eval_shape(init_variables, rng)
    boxed = boxed_variables['params']
    collections = {k: v for k, v in boxed_variables.items() if k != 'params'}
    param_shardings = sharding.logical_to_sharding(boxed, mesh, rules)
    collection_shardings = sharding.logical_to_sharding(collections, mesh, rules) if collections else {}
    shapes = jax.eval_shape(_init_state_fn(init_variables, tx, ema_teacher), rng)
  # Outside the mesh: optax runs `tx.init` eagerly on placeholders, which must not land on the
  # mesh's devices (compile-only devices of an ahead-of-time topology cannot run anything).
  replicated = sharding.replicated(mesh)
  opt_shardings = optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    shapes.opt_state,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )
  shardings = TrainState(
    step=replicated,
    params=param_shardings,
    opt_state=opt_shardings,
    rng=replicated,
    model_state=collection_shardings,
    teacher=param_shardings if ema_teacher else {},
    frozen=jax.tree.map(lambda _: replicated, frozen or {}),
  )
  shapes = shapes.replace(frozen=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), frozen or {}))
  return abstract_with_shardings(shapes, shardings), shardings


def _init_state_fn(init_variables, tx, ema_teacher: bool) -> Callable[[jax.Array], TrainState]:
  """rng -> the initial TrainState (without `frozen`), unsharded: jit it with out_shardings."""

  def init_state(rng):
    variables = nn.unbox(init_variables(rng))
    params = variables['params']
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=rng,
      model_state={k: v for k, v in variables.items() if k != 'params'},
      teacher=jax.tree.map(jnp.copy, params) if ema_teacher else {},
    )

  return init_state


def init_sharded_state(
  init_variables: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh,
  rng: jax.Array,
  shardings: TrainState,
  *,
  rules,
  ema_teacher: bool = False,
  frozen: Any = None,
) -> TrainState:
  """Initialise the state directly in `shardings` (from `abstract_sharded_state` with the same
  arguments): parameters from `init_variables(rng)`, optimizer state, teacher; `frozen` placed."""
  with sharding.sharding_context(mesh, rules):
    init_state = _init_state_fn(init_variables, tx, ema_teacher)
    state = jax.jit(init_state, out_shardings=shardings.replace(frozen={}))(rng)
    return state.replace(frozen=jax.device_put(frozen or {}, shardings.frozen))


def create_sharded_state(
  init_variables: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh,
  rng: jax.Array,
  *,
  rules,
  ema_teacher: bool = False,
  frozen: Any = None,
) -> tuple[TrainState, TrainState]:
  """Initialise parameters and optimizer state directly in their shardings by `rules`
  (`abstract_sharded_state`, then `init_sharded_state`). Returns (state, state_shardings)."""
  kw = dict(rules=rules, ema_teacher=ema_teacher, frozen=frozen)
  _, shardings = abstract_sharded_state(init_variables, tx, mesh, **kw)
  state = init_sharded_state(init_variables, tx, mesh, rng, shardings, **kw)
  return state, shardings


def strip_boxes(tree):
  """Remove logical-axis boxes without applying sharding constraints (for abstract trees)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def abstract_with_shardings(state: TrainState, shardings: TrainState):
  """ShapeDtypeStructs carrying target shardings (for sharded checkpoint restore)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
