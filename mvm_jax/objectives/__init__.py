"""Objective registry: a method is a weighted sum of named objectives.

Each objective is built from the config by a factory and is a pure function
`(outputs: dict, batch: dict) -> (loss: scalar, metrics: dict)`. The config
lists objectives with weights, e.g. `config.objectives = {'pixel_mse': 1.0}`;
`make_objective_fn` sums them. New objectives (token cross-entropy, loss
prediction, InfoNCE, ...) register themselves (`registry.register`) and need no change to the
training loop.
"""

from mvm_jax.objectives.registry import OBJECTIVES, ObjectiveFn, make_objective_fn, register

# Register the built-in objectives.
from mvm_jax.objectives import pixel_mse  # noqa: F401
from mvm_jax.objectives import loss_prediction  # noqa: F401
from mvm_jax.objectives import contrastive  # noqa: F401
from mvm_jax.objectives import vq  # noqa: F401
from mvm_jax.objectives import token_ce  # noqa: F401

# The objectives registered above; one registered elsewhere (a user's, a test's) is no method's.
BUILT_IN = frozenset(OBJECTIVES)

__all__ = ['BUILT_IN', 'OBJECTIVES', 'ObjectiveFn', 'make_objective_fn', 'register']
