"""Two-view objectives (infonce, simsiam, vicreg) against NumPy references and across meshes
(8 fake CPU devices)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mvm_jax import objectives
from mvm_jax.objectives import contrastive

# Less LLVM optimization: a fraction of the CPU compile time, same results.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}

# --- NumPy references ----------------------------------------------------------


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_infonce(x, tau):
  """Per-anchor loop: partner of row i is i ^ 1; denominators skip i itself."""
  z = _np_normalize(x.astype(np.float64))
  n = len(z)
  losses, correct, pos, neg = [], 0, [], []
  for i in range(n):
    j = i ^ 1
    others = [k for k in range(n) if k != i]
    logits = np.array([z[i] @ z[k] / tau for k in others])
    losses.append(-(z[i] @ z[j] / tau) + np.log(np.sum(np.exp(logits))))
    correct += others[int(np.argmax(logits))] == j
    pos.append(z[i] @ z[j])
    neg.extend(z[i] @ z[k] for k in others if k != j)
  return np.mean(losses), correct / n, np.mean(pos), np.mean(neg)


def _np_vicreg(x, lam, mu, nu, gamma=1.0, eps=1e-4):
  a, b = x[0::2].astype(np.float64), x[1::2].astype(np.float64)
  inv = np.mean((a - b) ** 2)

  def var(z):
    return np.mean(np.maximum(0.0, gamma - np.sqrt(z.var(0, ddof=1) + eps)))

  def cov(z):
    c = np.cov(z, rowvar=False)  # unbiased
    d = z.shape[1]
    return sum(c[k, l] ** 2 for k in range(d) for l in range(d) if k != l) / d

  return lam * inv + mu * (var(a) + var(b)) / 2 + nu * (cov(a) + cov(b)), inv


@pytest.fixture(scope='module')
def views():
  rng = np.random.default_rng(0)
  base = rng.normal(size=(8, 1, 6))
  # 8 videos × 2 views, correlated within a pair, adjacent rows.
  return (base + 0.7 * rng.normal(size=(8, 2, 6))).reshape(16, 6).astype(np.float32)


def _contrastive_config(**overrides):
  c = ml_collections.ConfigDict({'contrastive': contrastive.default_contrastive_config()})
  c.contrastive.update(overrides)
  return c


# --- infonce -----------------------------------------------------------------


def test_infonce_matches_numpy(views):
  want_loss, want_acc, want_pos, want_neg = _np_infonce(views, 0.1)
  loss, metrics = objectives.OBJECTIVES['infonce'](_contrastive_config())({'projection': views}, {})
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['contrastive/accuracy'], want_acc)
  np.testing.assert_allclose(metrics['contrastive/pos_sim'], want_pos, rtol=1e-5)
  np.testing.assert_allclose(metrics['contrastive/neg_sim'], want_neg, rtol=1e-4, atol=1e-6)
  assert 0.0 < want_acc < 1.0  # the case distinguishes right from wrong rankings
  # VIMPAC: τ·(L_a + L_b) with τ = 0.2.
  vimpac = _contrastive_config(temperature=0.2, scale_by_temperature=True, sum_directions=True)
  loss, _ = objectives.OBJECTIVES['infonce'](vimpac)({'projection': views}, {})
  np.testing.assert_allclose(loss, 0.2 * 2 * _np_infonce(views, 0.2)[0], rtol=1e-5)


def test_infonce_global_batch_on_mesh_equals_one_device(views):
  """4×2 mesh, batch sharded over both axes: loss and gradient as on 1 device."""
  fn = objectives.OBJECTIVES['infonce'](_contrastive_config())

  def loss_and_grad(x):
    return jax.value_and_grad(lambda x: fn({'projection': x}, {})[0])(x)

  one = jax.jit(loss_and_grad, compiler_options=FAST_COMPILE)(jax.device_put(views, jax.devices()[0]))
  mesh = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  x = jax.device_put(views, batch)
  assert len(x.addressable_shards) == 8
  sharded = jax.jit(loss_and_grad, in_shardings=batch, compiler_options=FAST_COMPILE)(x)
  np.testing.assert_allclose(sharded[0], one[0], rtol=1e-6)
  np.testing.assert_allclose(sharded[1], one[1], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(one[0], _np_infonce(views, 0.1)[0], rtol=1e-5)


def test_objectives_need_paired_views():
  with pytest.raises(ValueError, match='adjacent'):
    contrastive.infonce_loss(jnp.zeros((5, 4)), 0.1)


# --- simsiam / vicreg ----------------------------------------------------------


def test_simsiam_matches_numpy_and_stops_gradient(views):
  rng = np.random.default_rng(1)
  prediction = rng.normal(size=views.shape).astype(np.float32)
  fn = objectives.OBJECTIVES['simsiam'](_contrastive_config())

  def loss_of(z, p):
    return fn({'projection': z, 'prediction': p}, {})

  (loss, metrics), (grad_z, grad_p) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(
    views, prediction
  )
  p, z = _np_normalize(prediction[0::2].astype(np.float64)), _np_normalize(views.astype(np.float64))
  p2 = _np_normalize(prediction[1::2].astype(np.float64))
  want = -0.5 * (np.mean(np.sum(p * z[1::2], -1)) + np.mean(np.sum(p2 * z[0::2], -1)))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics['simsiam/z_std'], np.mean(z.std(0)), rtol=1e-5)
  np.testing.assert_array_equal(grad_z, 0.0)
  assert np.all(np.abs(grad_p).sum(-1) > 0)


def test_vicreg_matches_numpy(views):
  fn = objectives.OBJECTIVES['vicreg'](_contrastive_config())
  loss, metrics = fn({'projection': views}, {})
  want, want_inv = _np_vicreg(views, 25.0, 25.0, 1.0)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics['vicreg/invariance'], want_inv, rtol=1e-5)
  # Each term enters with its own weight.
  config = _contrastive_config()
  config.contrastive.vicreg.update(invariance=2.0, variance=3.0, covariance=5.0)
  loss, _ = objectives.OBJECTIVES['vicreg'](config)({'projection': 3 * views}, {})
  np.testing.assert_allclose(loss, _np_vicreg(3 * views, 2.0, 3.0, 5.0)[0], rtol=1e-5)


def test_registered_in_weighted_sum(views):
  config = _contrastive_config()
  config.objectives = {'infonce': 0.5, 'vicreg': 0.1}
  total, metrics = objectives.make_objective_fn(config)({'projection': views}, {})
  np.testing.assert_allclose(total, 0.5 * metrics['loss/infonce'] + 0.1 * metrics['loss/vicreg'], rtol=1e-6)
  assert 'contrastive/accuracy' in metrics and 'vicreg/covariance' in metrics
