"""mvm_jax.objectives.vq: the vq_recon objective."""

import jax.numpy as jnp
import ml_collections
import numpy as np

from mvm_jax import objectives


def test_vq_recon_objective():
  config = ml_collections.ConfigDict({'objectives': {'vq_recon': 1.0}})
  fn = objectives.make_objective_fn(config)
  outputs = {
    'recon': jnp.zeros((2, 8, 8, 3)),
    'vq_loss': jnp.array(0.5),
    'perplexity': jnp.array(3.0),
    'usage': jnp.array(0.25),
  }
  loss, metrics = fn(outputs, {'inputs': jnp.ones((2, 8, 8, 3))})
  np.testing.assert_allclose(loss, 1.5)
  np.testing.assert_allclose(metrics['vq/recon_mse'], 1.0)
  assert float(metrics['vq/perplexity']) == 3.0 and float(metrics['vq/usage']) == 0.25
