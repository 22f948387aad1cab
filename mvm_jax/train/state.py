"""Train state and its sharded initialisation."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mvm_jax.train import partitioning


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


def create_sharded_state(
  init_variables: Callable[[jax.Array], Any],
  tx: optax.GradientTransformation,
  mesh,
  rng: jax.Array,
  *,
  ema_teacher: bool = False,
  frozen: Any = None,
) -> tuple[TrainState, TrainState]:
  """Initialise parameters and optimizer state directly in their shardings.

  `init_variables(rng)` returns Flax variables {'params': ..., other
  collections...} (as `model.init`) whose leaves may be LogicallyPartitioned
  (they name their axes); those names pick each leaf's sharding. Optimizer
  moments and the EMA teacher (`ema_teacher=True`: starts equal to the
  params) follow their parameter; scalars (step, Adam's count) are
  replicated. Returns (state, state_shardings).
  """
  with partitioning.sharding_context(mesh):
    boxed_variables = jax.eval_shape(init_variables, rng)
    boxed = boxed_variables['params']
    collections = {k: v for k, v in boxed_variables.items() if k != 'params'}
    param_shardings = partitioning.logical_to_sharding(boxed, mesh)
    collection_shardings = partitioning.logical_to_sharding(collections, mesh) if collections else {}
    abstract_params = _strip_boxes(boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = partitioning.replicated(mesh)
    opt_shardings = optax.tree_map_params(
      tx,
      lambda _, sharding: sharding,
      abstract_opt,
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

    state = jax.jit(init_state, out_shardings=shardings.replace(frozen={}))(rng)
    state = state.replace(frozen=jax.device_put(frozen or {}, shardings.frozen))
  return state, shardings


def _strip_boxes(tree):
  """Remove logical-axis boxes without applying sharding constraints (for abstract trees)."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_box(x) else x, tree, is_leaf=is_box)


def abstract_with_shardings(state: TrainState, shardings: TrainState):
  """ShapeDtypeStructs carrying target shardings (for sharded checkpoint restore)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
