"""mvm_jax.models.vit: patchify's order, and the model.attention / model.remat / model.scan_blocks /
model.patch_embed switches give the default model's numbers."""

import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax import config as config_lib
from mvm_jax import masking, objectives
from mvm_jax.methods import mae as mae_method
from mvm_jax.models import vit


@pytest.fixture(scope='module')
def setup():
  from tests.conftest import micro_config

  config = micro_config()
  model = mae_method.autoencoder(config)
  masker = masking.make_masker('random', model.encoder.grid, 0.75)
  video = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  mask = masker(jax.random.PRNGKey(1), 2)
  params = jax.jit(model.init)({'params': jax.random.PRNGKey(2)}, video, mask)['params']
  return config, video, mask, params


def _model(config, **switches):
  c = config.copy_and_resolve_references()
  c.model.update(switches)
  return mae_method.autoencoder(c)


def _loss_and_grads(model, config, params, video, mask):
  objective = objectives.make_objective_fn(config, {})

  def loss(p):
    outputs = model.apply(
      {'params': p}, video, mask, deterministic=False, rngs={'dropout': jax.random.PRNGKey(3)}
    )
    return objective(outputs, {'inputs': video}, 0)[0]

  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize('masked', [False, True])
def test_einsum_attention_equals_jax_dot_product_attention(masked):
  """attention 'einsum' (the default) gives jax.nn.dot_product_attention's outputs and gradients,
  with and without a key mask."""
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 7, 2, 8)) for i in range(3))
  key_mask = jnp.array([[True] * 7, [True, False] * 3 + [True]]) if masked else None

  def attend(impl):
    return lambda q, k, v: vit.attend(q, k, v, key_mask, 8**-0.5, impl)

  np.testing.assert_allclose(attend('einsum')(q, k, v), attend('xla')(q, k, v), rtol=1e-5, atol=1e-6)
  grads = [
    jax.grad(lambda *a, f=attend(impl): (f(*a) ** 2).sum(), argnums=(0, 1, 2))(q, k, v)
    for impl in ('einsum', 'xla')
  ]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *grads)
  if masked:  # a masked key gets no weight: changing its value changes nothing
    v2 = v.at[1, 1].add(100.0)
    np.testing.assert_allclose(attend('einsum')(q, k, v2), attend('einsum')(q, k, v), atol=1e-6)


def test_einsum_attention_keeps_logits_and_softmax_in_float32():
  """In bfloat16 the softmax runs on float32 logits: closer to the float32 result than attention
  computed in bfloat16 throughout."""
  q, k, v = (3 * jax.random.normal(jax.random.PRNGKey(i), (2, 64, 2, 16)) for i in range(3))
  exact = vit.einsum_attention(q, k, v, None, 0.25)
  bf = [x.astype(jnp.bfloat16) for x in (q, k, v)]
  ours = vit.einsum_attention(*bf, None, 0.25)
  assert ours.dtype == jnp.bfloat16
  all_bf16 = jnp.einsum(
    'bhqk,bkhd->bqhd', jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', *bf[:2]) * 0.25), bf[2]
  )
  err = lambda y: float(jnp.abs(y.astype(jnp.float32) - exact).mean())  # noqa: E731
  assert err(ours) < err(all_bf16)


def test_model_with_xla_attention_equals_the_einsum_default(setup):
  config, video, mask, params = setup
  loss, grads = _loss_and_grads(_model(config, attention='einsum'), config, params, video, mask)
  loss_xla, grads_xla = _loss_and_grads(_model(config, attention='xla'), config, params, video, mask)
  np.testing.assert_allclose(loss_xla, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), grads_xla, grads)


@pytest.mark.parametrize('masked', [False, True])
def test_padding_an_odd_sequence_for_cudnn_leaves_the_attention_unchanged(masked):
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 7, 2, 8)) for i in range(3))
  key_mask = jnp.array([[True] * 7, [True, False] * 3 + [True]]) if masked else None

  def attend(q, pad):
    return vit.attend(q, k, v, key_mask, 0.3, 'xla', pad_to_even=pad)

  assert attend(q, True).shape == (2, 7, 2, 8)
  np.testing.assert_allclose(attend(q, True), attend(q, False), rtol=1e-6, atol=1e-6)
  grad = lambda pad: jax.grad(lambda q: attend(q, pad).sum())(q)  # noqa: E731
  np.testing.assert_allclose(grad(True), grad(False), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN fused attention needs a GPU')
def test_cudnn_attention_gives_the_xla_loss_and_grads_in_bfloat16(setup):
  config, video, mask, params = setup
  config = config.copy_and_resolve_references()
  config.model.dtype = 'bfloat16'
  loss, grads = _loss_and_grads(_model(config, attention='xla'), config, params, video, mask)
  loss_c, grads_c = _loss_and_grads(_model(config, attention='cudnn'), config, params, video, mask)
  np.testing.assert_allclose(loss_c, loss, rtol=2e-2)
  # bfloat16 noise: compare the whole gradient vector (single leaves with tiny gradients, ~1e-5,
  # differ by more than 5 % of their own norm on an H100).
  flat = lambda g: np.asarray(jax.flatten_util.ravel_pytree(g)[0], np.float32)  # noqa: E731
  g_c, g = flat(grads_c), flat(grads)
  assert np.linalg.norm(g_c - g) <= 5e-2 * np.linalg.norm(g)


@pytest.mark.parametrize('remat', ['full', 'dots_saveable'])
def test_remat_gives_the_same_loss_and_grads(setup, remat):
  config, video, mask, params = setup
  loss, grads = _loss_and_grads(_model(config), config, params, video, mask)
  loss_r, grads_r = _loss_and_grads(_model(config, remat=remat), config, params, video, mask)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_r, grads)


def test_scan_blocks_gives_the_unrolled_outputs_with_mapped_params(setup):
  config, video, mask, params = setup
  depth = config.model.encoder.depth
  scanned = _model(config, scan_blocks=True)
  shapes = nn.meta.unbox(
    jax.eval_shape(scanned.init, {'params': jax.random.PRNGKey(2)}, video, mask)['params']
  )
  params = nn.meta.unbox(params)
  encoder = dict(params['encoder'])
  blocks = [encoder.pop(f'block{i}') for i in range(depth)]
  encoder['blocks'] = {'block': jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}
  mapped = dict(params, encoder=encoder)
  strip = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)  # noqa: E731
  assert strip(mapped) == strip(shapes)
  out = _model(config).apply({'params': params}, video, mask)
  out_scan = scanned.apply({'params': mapped}, video, mask)
  np.testing.assert_allclose(out_scan['pred'], out['pred'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out_scan['latent'], out['latent'], rtol=1e-5, atol=1e-6)


def test_switches_are_validated(setup):
  config = setup[0]
  for key, value in (('attention', 'flash'), ('remat', 'some'), ('attention', 'cudnn')):
    c = config.copy_and_resolve_references()
    c.model[key] = value
    if value == 'cudnn' and jax.default_backend() == 'gpu':
      c.model.dtype = 'float32'  # cudnn needs bf16/fp16
    with pytest.raises(config_lib.ConfigError, match=f'model.{key}'):
      config_lib.validate(c)
  c = config.copy_and_resolve_references()
  c.model.update(scan_blocks=True, drop_path_rate=0.1)
  with pytest.raises(config_lib.ConfigError, match='model.scan_blocks'):
    config_lib.validate(c)


def test_unrolled_parameter_names_are_unchanged_by_remat(setup):
  config, video, mask, params = setup
  remat = jax.eval_shape(_model(config, remat='full').init, {'params': jax.random.PRNGKey(2)}, video, mask)
  names = lambda t: sorted(jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(t))  # noqa: E731
  assert names(remat['params']) == names(params)


@pytest.mark.skipif(jax.device_count() < 8, reason='needs 8 devices (the fake CPU ones of conftest)')
def test_scanned_model_trains_sharded_with_the_unrolled_weight_decay(config):
  from mvm_jax.train import loop, optimizer

  config.model.scan_blocks = True
  config.mesh.shape = (4, 2, 1)
  exp, state = loop.build_experiment(config, samples_per_epoch=64, devices=jax.devices()[:8])
  decay = optimizer.weight_decay_mask(state.params)
  blocks = decay['encoder']['blocks']['block']
  assert blocks['mlp']['fc1']['kernel'] and not blocks['mlp']['fc1']['bias'] and not blocks['norm1']['scale']
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (8, 4, 32, 32, 3), np.uint8)
  state, metrics = exp.train_step(state, loop.global_batch({'video': video}, exp.batch_sharding))
  assert np.isfinite(float(metrics['loss']))


@jax.default_matmul_precision('highest')  # GPUs default to TF32 for float32 matmuls
def test_matmul_patch_embedding_of_the_kept_patches_equals_the_convolution(setup):
  """patch_embed='matmul' projects only the kept patches (sparse MAE); 'conv' embeds all and keeps
  ids_keep afterwards: the same tokens, loss and gradients."""
  config, video, mask, params = setup
  conv, matmul = _model(config, patch_embed='conv'), _model(config, patch_embed='matmul')
  out = conv.apply({'params': params}, video, mask)
  out_mm = matmul.apply({'params': params}, video, mask)
  np.testing.assert_allclose(out_mm['latent'], out['latent'], rtol=1e-5, atol=1e-5)
  loss, grads = _loss_and_grads(conv, config, params, video, mask)
  loss_mm, grads_mm = _loss_and_grads(matmul, config, params, video, mask)
  np.testing.assert_allclose(loss_mm, loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), grads_mm, grads)
  # The kept-patch path must be the one taken: its program has no convolution.
  hlo = jax.jit(lambda p: matmul.apply({'params': p}, video, mask)['latent']).lower(params).as_text()
  assert 'convolution' not in hlo


def test_patch_embedding_with_ids_keep_projects_only_the_kept_patches():
  """PatchEmbed('matmul') with ids_keep [B, K] gives rows ids_keep of the full embedding."""
  embed = vit.PatchEmbed((2, 8, 8), 16, impl='matmul')
  video = jax.random.normal(jax.random.key(0), (2, 4, 16, 16, 3))
  params = embed.init(jax.random.key(1), video)
  ids_keep = jnp.array([[3, 0], [5, 6]])
  full = embed.apply(params, video)
  kept = embed.apply(params, video, ids_keep)
  assert kept.shape == (2, 2, 16)
  np.testing.assert_allclose(kept, jnp.take_along_axis(full, ids_keep[..., None], axis=1), rtol=1e-6)
  with pytest.raises(ValueError, match='ids_keep needs impl "matmul"'):
    vit.PatchEmbed((2, 8, 8), 16, impl='conv').apply(params, video, ids_keep)


def test_patchify_roundtrip_and_order():
  video = jnp.arange(2 * 4 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 4, 8, 8, 3)
  patches = vit.patchify(video, (2, 4, 4))
  assert patches.shape == (2, 2 * 2 * 2, 2 * 4 * 4 * 3)
  np.testing.assert_array_equal(vit.unpatchify(patches, (2, 2, 2), (2, 4, 4)), video)
  # token 1 = (t=0, h=0, w=1); its first vector entry is frame 0, row 0, column 4, channel 0
  assert patches[0, 1, 0] == video[0, 0, 0, 4, 0]
  # vector order (u, p, q, c): entry 3 is channel 0 of column 1
  assert patches[0, 0, 3] == video[0, 0, 0, 1, 0]


def test_gelu_is_the_exact_gelu_values_and_gradients():
  x = jnp.linspace(-8.0, 8.0, 4001, dtype=jnp.float32)
  want = jax.nn.gelu(x, approximate=False)
  np.testing.assert_allclose(vit.gelu(x), want, atol=1e-6, rtol=1e-6)
  grad = jax.vmap(jax.grad(vit.gelu))(x)
  np.testing.assert_allclose(
    grad, jax.vmap(jax.grad(lambda y: jax.nn.gelu(y, approximate=False)))(x), atol=1e-6
  )
  assert not np.allclose(vit.gelu(x), jax.nn.gelu(x, approximate=True), atol=1e-4)  # not the tanh form
