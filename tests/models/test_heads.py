"""mvm_jax.models.heads: Projector (BatchNorm statistics global across a mesh, options) and Pooling,
against NumPy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mvm_jax.models import heads

# Less LLVM optimization: a fraction of the CPU compile time, same results.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def test_projector_batchnorm_statistics_are_global():
  """Train-mode BatchNorm on a 4×2 mesh (batch sharded) = on 1 device."""
  projector = heads.Projector(hidden=16, out=8, num_layers=3)
  x = np.random.default_rng(0).normal(size=(16, 12)).astype(np.float32) * 3 + 1
  variables = jax.tree.map(np.asarray, nn.unbox(projector.init(jax.random.key(0), x[:2], train=False)))
  assert set(variables) == {'params', 'batch_stats'}
  assert 'bias' in variables['params']['fc2']

  def forward(variables, x):
    return projector.apply(variables, x, train=True, mutable=['batch_stats'])

  one = jax.jit(forward, compiler_options=FAST_COMPILE)(variables, jax.device_put(x, jax.devices()[0]))
  mesh = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  shardings = (NamedSharding(mesh, P()), NamedSharding(mesh, P(('data', 'fsdp'))))
  sharded = jax.jit(forward, in_shardings=shardings, compiler_options=FAST_COMPILE)(
    variables, jax.device_put(x, shardings[1])
  )
  np.testing.assert_allclose(sharded[0], one[0], rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), sharded[1], one[1])
  # Batch statistics, not running averages (init mean 0 / var 1): the first BN
  # sees the global batch mean of fc0's output.
  h = x @ variables['params']['fc0']['kernel'] + variables['params']['fc0']['bias']
  np.testing.assert_allclose(one[1]['batch_stats']['bn0']['mean'], 0.1 * h.mean(0), rtol=1e-4, atol=1e-6)


def test_projector_options():
  x = jnp.ones((4, 12))
  v = heads.Projector(hidden=16, out=8, num_layers=2, use_bias_last=False, bn_last=True).init(
    jax.random.key(0), x, train=False
  )
  assert 'bias' not in v['params']['fc1'] and 'bn1' in v['params']
  out = heads.Projector(hidden=16, out=8, num_layers=1).apply(
    nn.unbox(heads.Projector(hidden=16, out=8, num_layers=1).init(jax.random.key(0), x)), x
  )
  assert out.shape == (4, 8)


def test_pooling_matches_numpy():
  rng = np.random.default_rng(0)
  latent = rng.normal(size=(2, 5, 3)).astype(np.float32)  # [CLS] + 4 tokens
  keep = np.array([[1, 1, 0, 1], [1, 0, 0, 0]], np.float32)
  tokens = latent[:, 1:]

  def pool(kind, token_mask=None, **kw):
    module = heads.Pooling(kind=kind, **kw)
    variables = module.init(jax.random.key(0), latent, token_mask)
    return np.asarray(module.apply(variables, latent, token_mask)), variables

  np.testing.assert_allclose(pool('mean')[0], tokens.mean(1), rtol=1e-6)
  np.testing.assert_allclose(pool('max')[0], tokens.max(1))
  np.testing.assert_allclose(pool('cls')[0], latent[:, 0])
  want_mean = [tokens[b][keep[b] > 0].mean(0) for b in range(2)]
  np.testing.assert_allclose(pool('mean', keep)[0], want_mean, rtol=1e-6)
  np.testing.assert_allclose(pool('max', keep)[0], [tokens[b][keep[b] > 0].max(0) for b in range(2)])
  gem, variables = pool('gem', keep)
  want_gem = [np.mean(np.maximum(tokens[b][keep[b] > 0], 1e-6) ** 3, 0) ** (1 / 3) for b in range(2)]
  np.testing.assert_allclose(gem, want_gem, rtol=1e-5)
  np.testing.assert_allclose(variables['params']['gem_p'], [3.0])
  fixed, variables = pool('gem', keep, gem_p=2.0, gem_learnable=False)
  assert not variables
  want_fixed = [np.mean(np.maximum(tokens[b][keep[b] > 0], 1e-6) ** 2, 0) ** 0.5 for b in range(2)]
  np.testing.assert_allclose(fixed, want_fixed, rtol=1e-5)
