"""mvm_jax.models.tokenizer: our VQ-VAE (shapes, straight-through, EMA, restarts, training)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mvm_jax import objectives
from mvm_jax.models import tokenizer

K, D = 16, 8  # tiny codebook
TINY = {'codebook_size': K, 'code_dim': D, 'widths': (8, 8, 16), 'num_res_blocks': 1}

# XLA compiles are the cost of these tests on a busy CPU: parameters are
# initialised once (with an 'rbg' key; threefry compiles slowly) and shared by
# the EMA and learned-codebook variants, and each test compiles one function.


@functools.cache
def tiny_variables():
  """EMA-model variables of TINY: {'params', 'vq_stats'} (shapes do not depend on decay/threshold)."""
  model = tokenizer.VQVAE(**TINY)
  return nn.unbox(jax.jit(model.init)(rng(), jnp.zeros((1, 16, 16, 3))))


def learned_variables():
  """The same weights for ema=False: the EMA codebook becomes the 'codebook' param."""
  v = tiny_variables()
  quantizer = {'codebook': v['vq_stats']['quantizer']['embedding']}
  return {'params': {**v['params'], 'quantizer': quantizer}}


def rng(seed=0):
  return jax.random.key(seed, impl='rbg')


def smooth_frames(n=8, size=32, seed=0):
  """n smooth color images [n, size, size, 3] in [0, 1]: per-channel linear ramps."""
  r = np.random.default_rng(seed)
  u = np.linspace(0.0, 1.0, size)
  grid = np.stack(np.meshgrid(u, u, indexing='ij'), -1)  # [S, S, 2]
  base, slope = r.uniform(0.2, 0.8, (n, 1, 1, 3)), r.uniform(-0.3, 0.3, (n, 2, 3))
  return jnp.asarray(np.clip(base + np.einsum('hwk,nkc->nhwc', grid - 0.5, slope), 0, 1), jnp.float32)


def test_vqvae_shapes_and_encode_decode():
  model, variables = tokenizer.VQVAE(**TINY), tiny_variables()
  clips = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 16, 24, 3))

  @jax.jit
  def run(variables, clips):
    out = model.apply(variables, clips)
    codes = model.apply(variables, clips, method='encode')
    return out, codes, model.apply(variables, codes, method='decode')

  out, codes, recon = run(variables, clips)
  assert out['recon'].shape == clips.shape
  assert out['codes'].shape == (2, 3, 2, 3) and out['codes'].dtype == jnp.int32
  assert out['vq_loss'].shape == out['perplexity'].shape == out['usage'].shape == ()
  np.testing.assert_array_equal(codes, out['codes'])
  np.testing.assert_allclose(recon, out['recon'], atol=1e-5)  # straight-through forward = code vectors
  assert jax.eval_shape(model.apply, variables, clips[:, 0])['codes'].shape == (2, 2, 3)
  with pytest.raises(ValueError, match='multiple of 8'):
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 12, 16, 3)))


@functools.cache
def learned_grads():
  """Gradients of the recon MSE alone and of the VQ loss alone, learned-codebook model."""
  model, x = tokenizer.VQVAE(**TINY, ema=False), smooth_frames(2, 16)

  def losses(params):
    out = model.apply({'params': params}, x)
    return jnp.mean(jnp.square(out['recon'] - x)), out

  def vq_loss(params):
    return losses(params)[1]['vq_loss']

  @jax.jit
  def run(params):
    return jax.grad(lambda p: losses(p)[0])(params), jax.grad(vq_loss)(params), losses(params)[1]

  return run(learned_variables()['params'])


def test_straight_through_gradient_reaches_encoder():
  recon_grads, _, _ = learned_grads()  # no VQ loss: only the straight-through path reaches the encoder
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(recon_grads))
  assert float(jnp.abs(recon_grads['encoder']['proj']['kernel']).sum()) > 0
  assert float(jnp.abs(recon_grads['encoder']['down_0']['kernel']).sum()) > 0
  assert float(jnp.abs(recon_grads['quantizer']['codebook']).sum()) == 0  # codes only move by their own loss


def numpy_ema(stats, z, codes, decay, eps):
  cs, es = np.asarray(stats['cluster_size'], np.float64), np.asarray(stats['embed_sum'], np.float64)
  k = cs.shape[0]
  counts = np.bincount(codes, minlength=k)
  sums = np.zeros_like(es)
  np.add.at(sums, codes, z)
  cs = decay * cs + (1 - decay) * counts
  es = decay * es + (1 - decay) * sums
  n = cs.sum()
  return cs, es, es / ((cs + eps) / (n + k * eps) * n)[:, None]


def test_ema_update_formula_tiny_case():
  stats = {
    'cluster_size': jnp.array([1.0, 1.0]),
    'embed_sum': jnp.array([[0.0], [10.0]]),
    'embedding': jnp.array([[0.0], [10.0]]),
    'count': jnp.array(0, jnp.int32),
  }
  z, codes = jnp.array([[1.0], [3.0]]), jnp.array([0, 0])
  new = tokenizer.ema_update(stats, z, codes, decay=0.5, eps=0.0, dead_code_threshold=0.0, rng=rng())
  # cluster_size = 0.5·1 + 0.5·[2, 0]; embed_sum = 0.5·[0, 10] + 0.5·[4, 0]; embedding = sum / size.
  np.testing.assert_allclose(new['cluster_size'], [1.5, 0.5])
  np.testing.assert_allclose(new['embed_sum'], [[2.0], [5.0]])
  np.testing.assert_allclose(new['embedding'], [[2.0 / 1.5], [10.0]], rtol=1e-6)
  assert int(new['count']) == 1
  # Laplace smoothing with eps > 0.
  new = tokenizer.ema_update(stats, z, codes, decay=0.5, eps=0.1, dead_code_threshold=0.0, rng=rng())
  _, _, want = numpy_ema(stats, np.asarray(z), np.asarray(codes), 0.5, 0.1)
  np.testing.assert_allclose(new['embedding'], want, rtol=1e-6)


def test_ema_codebook_update_in_model_matches_formula():
  model, variables = tokenizer.VQVAE(**TINY, dead_code_threshold=0.0, ema_decay=0.9), tiny_variables()
  x = smooth_frames(4, 16)

  @jax.jit
  def run(variables, x):
    z = model.apply(variables, x, method=lambda m, x: m.encoder(x))
    return z, model.apply(variables, x, mutable='vq_stats')

  z, (out, state) = run(variables, x)
  z = np.asarray(z, np.float64).reshape(-1, D)
  old, new = variables['vq_stats']['quantizer'], state['vq_stats']['quantizer']
  codes = np.asarray(out['codes']).reshape(-1)
  distances = ((z[:, None, :] - np.asarray(old['embedding'])[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(codes, distances.argmin(1))  # quantized with the codebook before the update
  cs, es, emb = numpy_ema(old, z, codes, 0.9, 1e-5)
  np.testing.assert_allclose(new['cluster_size'], cs, rtol=1e-5)
  np.testing.assert_allclose(new['embed_sum'], es, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['embedding'], emb, rtol=1e-4, atol=1e-6)
  assert int(new['count']) == 1 and float(out['usage']) == len(np.unique(codes)) / K


def test_dead_code_restart_replaces_only_dead_codes():
  r = np.random.default_rng(0)
  embedding = r.normal(size=(4, 2)).astype(np.float32)
  cluster_size = np.array([5.0, 5.0, 0.01, 0.01], np.float32)
  stats = {
    'cluster_size': jnp.asarray(cluster_size),
    'embed_sum': jnp.asarray(embedding * cluster_size[:, None]),
    'embedding': jnp.asarray(embedding),
    'count': jnp.array(3, jnp.int32),
  }
  z = jnp.asarray(r.normal(size=(6, 2)), jnp.float32)
  codes = jnp.array([0, 0, 0, 1, 1, 1])
  update = jax.jit(tokenizer.ema_update, static_argnames=('decay', 'eps', 'dead_code_threshold'))
  new = update(stats, z, codes, decay=0.9, eps=1e-5, dead_code_threshold=0.5, rng=rng(1))
  ref = update(stats, z, codes, decay=0.9, eps=1e-5, dead_code_threshold=0.0, rng=rng(1))
  np.testing.assert_allclose(new['embedding'][:2], ref['embedding'][:2])  # live codes: plain EMA
  np.testing.assert_allclose(new['cluster_size'][:2], ref['cluster_size'][:2])
  for k in (2, 3):  # dead codes: a row of z, count reset to 1
    assert np.any(np.all(np.isclose(np.asarray(z), np.asarray(new['embedding'][k])), axis=1))
    np.testing.assert_allclose(new['embed_sum'][k], new['embedding'][k])
    assert float(new['cluster_size'][k]) == 1.0


def test_learned_codebook_gets_gradients():
  variables = learned_variables()
  model = tokenizer.VQVAE(**TINY, ema=False)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(rng(), jnp.zeros((1, 8, 8, 3)))))
  assert 'vq_stats' not in abstract and abstract['params']['quantizer']['codebook'].shape == (K, D)
  assert jax.tree.map(jnp.shape, abstract) == jax.tree.map(jnp.shape, variables)
  _, grads, out = learned_grads()
  g = np.abs(np.asarray(grads['quantizer']['codebook'])).sum(axis=1)
  used = np.unique(np.asarray(out['codes']))
  assert np.all(g[used] > 0)
  assert np.all(g[np.setdiff1d(np.arange(K), used)] == 0)
  assert float(out['codebook_loss']) > 0
  assert float(jnp.abs(grads['encoder']['proj']['kernel']).sum()) > 0  # commitment term


def test_tiny_training_lowers_recon_mse():
  model, variables, x = tokenizer.VQVAE(**TINY), tiny_variables(), smooth_frames(8, 32)
  params, stats = variables['params'], {'vq_stats': variables['vq_stats']}
  loss_fn = objectives.make_objective_fn(ml_collections.ConfigDict({'objectives': {'vq_recon': 1.0}}))
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, stats, opt_state):
    def f(params):
      out, new_stats = model.apply({'params': params, **stats}, x, mutable=['vq_stats'])
      loss, metrics = loss_fn(out, {'inputs': x})
      return loss, (metrics, new_stats)

    (_, (metrics, stats)), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, metrics

  history = []
  for _ in range(100):
    params, stats, opt_state, metrics = step(params, stats, opt_state)
    history.append(jax.device_get(metrics))
  first, last = history[0]['vq/recon_mse'], history[-1]['vq/recon_mse']
  assert last < 0.3 * first, (first, last)
  assert history[-1]['vq/perplexity'] > 1.0
  assert 0 < history[-1]['vq/usage'] <= 1
