"""MAE-ST model: shapes, invariances, sparse/dense equivalences, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import mae_st
from mvm_jax import masking
from mvm_jax.methods import mae as mae_method
from mvm_jax.models import mae as mae_lib
from mvm_jax.models import vit


@pytest.fixture(scope='module')
def setup():
  from tests.conftest import micro_config

  config = micro_config()
  model = mae_method.autoencoder(config)
  grid = model.encoder.grid
  masker = masking.make_masker('random', grid, 0.75)
  video = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  mask = masker(jax.random.PRNGKey(1), 2)
  params = jax.jit(model.init)({'params': jax.random.PRNGKey(2)}, video, mask)['params']
  apply = jax.jit(lambda p, v, m: model.apply({'params': p}, v, m))
  return config, model, grid, masker, video, mask, params, apply


def test_target_frames_follow_mae_st():
  np.testing.assert_array_equal(mae_lib.target_frame_indices(16, 8), [0, 2, 4, 6, 8, 10, 12, 15])


def test_output_shapes(setup):
  config, model, grid, masker, video, mask, params, apply = setup
  out = apply(params, video, mask)
  n = int(np.prod(grid))
  n_keep = masking.num_visible('random', grid, 0.75)
  p = (config.model.pred_t_dim // grid[0]) * 8 * 8 * 3
  assert out['pred'].shape == (2, n, p)
  assert out['target'].shape == (2, n, p)
  assert out['latent'].shape == (2, 1 + n_keep, config.model.encoder.width)
  np.testing.assert_array_equal(out['mask'], mask.mask)


def test_hidden_pixels_do_not_reach_the_sparse_encoder(setup):
  config, model, grid, masker, video, mask, params, apply = setup
  out = apply(params, video, mask)
  patches = vit.patchify(video, model.encoder.patch)
  noisy = jnp.where(mask.mask[..., None] > 0, patches + 100.0, patches)
  out2 = apply(params, vit.unpatchify(noisy, grid, model.encoder.patch), mask)
  np.testing.assert_allclose(out2['pred'], out['pred'], atol=1e-5)
  # ... while a visible pixel does change the prediction
  changed = jnp.where(mask.mask[..., None] > 0, patches, patches + 1.0)
  out3 = apply(params, vit.unpatchify(changed, grid, model.encoder.patch), mask)
  assert np.abs(np.asarray(out3['pred'] - out['pred'])).max() > 1e-3


def test_prediction_invariant_to_order_of_visible_tokens(setup):
  config, model, grid, masker, video, mask, params, apply = setup
  reordered = masking.Mask(ids_keep=mask.ids_keep[:, ::-1], ids_restore=None, mask=mask.mask)
  # rebuild ids_restore for the reversed visible order
  n_keep = mask.ids_keep.shape[1]
  hidden = jnp.argsort(mask.mask, axis=1, stable=True)[:, n_keep:]
  shuffle = jnp.concatenate([reordered.ids_keep, hidden], axis=1)
  reordered = reordered._replace(ids_restore=jnp.argsort(shuffle, axis=1).astype(jnp.int32))
  np.testing.assert_allclose(
    apply(params, video, reordered)['pred'], apply(params, video, mask)['pred'], atol=1e-5
  )


def test_dense_encoder_ignores_hidden_pixels(setup):
  config, *_ = setup
  config = config.copy_and_resolve_references()
  config.model.dense_encoder = True
  model = mae_method.autoencoder(config)
  grid = model.encoder.grid
  masker = masking.make_masker('random', grid, 0.75)
  video = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  mask = masker(jax.random.PRNGKey(1), 2)
  params = model.init({'params': jax.random.PRNGKey(2)}, video, mask)['params']
  out = model.apply({'params': params}, video, mask)
  assert out['latent'].shape[1] == 1 + int(np.prod(grid))
  patches = vit.patchify(video, model.encoder.patch)
  noisy = vit.unpatchify(jnp.where(mask.mask[..., None] > 0, -patches, patches), grid, model.encoder.patch)
  np.testing.assert_allclose(model.apply({'params': params}, noisy, mask)['pred'], out['pred'], atol=1e-5)


def test_sparse_encoder_with_all_tokens_equals_full_encoder(setup):
  config, model, grid, masker, video, mask, params, apply = setup
  enc = model.encoder
  enc_params = params['encoder']
  n = int(np.prod(grid))
  everything = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (2, n))
  full = enc.apply({'params': enc_params}, video)
  gathered = enc.apply({'params': enc_params}, video, ids_keep=everything)
  np.testing.assert_allclose(full, gathered, atol=1e-5)


def test_classifier_shares_encoder_parameters(setup):
  config, model, grid, masker, video, mask, params, apply = setup
  clf = mae_method.video_classifier(config, num_classes=5)
  clf_params = clf.init({'params': jax.random.PRNGKey(0)}, video)['params']
  same = jax.tree.map(lambda a, b: a.shape == b.shape, clf_params['encoder'], params['encoder'])
  assert all(jax.tree.leaves(same))
  assert jax.tree.structure(clf_params['encoder']) == jax.tree.structure(params['encoder'])
  logits = clf.apply({'params': {**clf_params, 'encoder': params['encoder']}}, video)
  assert logits.shape == (2, 5)


def test_sincos_position_embeddings_are_fixed(setup):
  config, *_ = setup
  config = config.copy_and_resolve_references()
  config.model.pos_embed = 'sincos'
  model = mae_method.autoencoder(config)
  video = jnp.zeros((1, 4, 32, 32, 3))
  mask = masking.make_masker('random', model.encoder.grid, 0.5)(jax.random.PRNGKey(0), 1)
  params = model.init({'params': jax.random.PRNGKey(0)}, video, mask)['params']
  names = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
  assert not any('pos_embed' in n for n in names)
  assert any('cls_token' in n for n in names)


@pytest.mark.parametrize('preset,millions', [('vit_b', 87), ('vit_l', 304), ('vit_h', 632)])
def test_finetune_encoder_sizes_match_paper_table_7(preset, millions):
  config = mae_st.get_config(preset)
  clf = mae_method.video_classifier(config, num_classes=400)
  video = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32)
  shapes = jax.eval_shape(lambda v: clf.init({'params': jax.random.PRNGKey(0)}, v), video)
  count = sum(x.size for x in jax.tree.leaves(shapes))
  assert abs(count / 1e6 - millions) < 1.0, count  # the paper rounds to whole millions
