"""HPM and ViC-MAE wired into the training step: EMA teacher, teacher-chosen
masks, loss predictor, two-view batches with BatchNorm projector and InfoNCE,
objectives composed by config (MAE-ST + loss prediction + InfoNCE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from mvm_jax import config as config_lib
from mvm_jax import methods, objectives
from mvm_jax.models import ema
from mvm_jax.train import checkpointing, loop


def hpm_config():
  from tests.conftest import micro_config

  c = micro_config()
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'loss_prediction': 1.0})
  c.hpm.update(ema_momentum=0.9, ema_momentum_final=0.99, ema_momentum_epochs=1)
  return c


def combined_config():
  """Two clips per video; HPM masks; pixel MSE + loss prediction + InfoNCE."""
  c = hpm_config()
  c.data.sampling = 'clip_pair'
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'loss_prediction': 1.0, 'infonce': 0.5})
  c.contrastive.projector.update(hidden=64, out=16)
  return c


def _batches(config, n, views=1, seed=0):
  rng = np.random.default_rng(seed)
  d = config.data
  shape = (config.batch_size,) + ((views,) if views > 1 else ()) + (d.num_frames, d.crop_size, d.crop_size, 3)
  return [{'video': rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _train(config, batches, devices):
  exp, state = loop.build_experiment(config, samples_per_epoch=64, devices=devices)
  states, history = [jax.device_get(state)], []
  for host_batch in batches:
    state, metrics = exp.train_step(state, loop.global_batch(host_batch, exp.batch_sharding))
    states.append(jax.device_get(state))
    history.append(jax.device_get(metrics))
  return exp, states, history


@pytest.fixture(scope='module')
def hpm_run():
  c = hpm_config()
  return c, *_train(c, _batches(c, 2), jax.devices()[:1])


def test_teacher_is_the_ema_of_the_params_after_each_step(hpm_run):
  config, _, states, history = hpm_run
  assert jax.tree.structure(states[0].teacher) == jax.tree.structure(states[0].params)
  jax.tree.map(np.testing.assert_array_equal, states[0].teacher, states[0].params)  # starts as a copy
  for step in (1, 2):
    before, after = states[step - 1], states[step]
    m = float(ema.momentum_schedule(step - 1, 64 // config.batch_size, 0.9, 0.99, 1))
    np.testing.assert_allclose(history[step - 1]['hpm/teacher_momentum'], m, rtol=1e-6)
    want = jax.tree.map(lambda t, p, m=m: m * t + (1 - m) * p, before.teacher, after.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), after.teacher, want)
  # The student moved, so the teacher lags it (and is not simply the params).
  moved = states[2].params['decoder']['pred']['kernel'] - states[2].teacher['decoder']['pred']['kernel']
  assert np.abs(moved).max() > 0


def test_teacher_receives_no_gradient(hpm_run):
  """d(step loss)/d(teacher) is zero: the teacher only picks discrete masks."""
  config, exp, states, _ = hpm_run
  model = exp.model
  policy = methods.get(config).setup(config, exp.total_steps).policy
  objective = objectives.make_objective_fn(config)
  video = jnp.asarray(_batches(config, 1, seed=3)[0]['video'])
  params = jax.tree.map(jnp.asarray, states[1].params)

  def loss(teacher):
    mask, _ = policy(jax.random.PRNGKey(0), 1, video, teacher)
    return objective(model.apply({'params': params}, video, mask), {})[0]

  grads = jax.grad(loss)(jax.tree.map(jnp.asarray, states[1].teacher))
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads))


def test_hpm_metrics_and_alpha_follow_the_schedule(hpm_run):
  config, exp, _, history = hpm_run
  grid = exp.model.encoder.grid
  masked = int(np.prod(grid)) - int(round(np.prod(grid) * (1 - config.masking.ratio)))
  for step, metrics in enumerate(history):
    # The official per-epoch schedule: (epoch + 1) / E, so step 0 already has hard patches.
    epoch = step // exp.steps_per_epoch
    epochs = -(-exp.total_steps // exp.steps_per_epoch)
    want = 0.5 * (epoch + 1) / epochs
    np.testing.assert_allclose(metrics['hpm/alpha'], want, rtol=1e-6)
    np.testing.assert_allclose(metrics['hpm/hard_fraction'], np.floor(want * masked) / masked, rtol=1e-6)
    assert {'hpm/loss_rank_corr', 'hpm/hard_fraction', 'loss/loss_prediction', 'loss/pixel_mse'} <= set(
      metrics
    )
  assert history[0]['hpm/hard_fraction'] > 0.0


def test_fully_hard_masks_are_the_teachers_highest_predicted_losses(hpm_run):
  config, exp, states, _ = hpm_run
  config = config.copy_and_resolve_references()
  config.hpm.update(alpha_manner='fixed', alpha_T=1.0)
  model = exp.model
  policy = methods.get(config).setup(config, exp.total_steps).policy
  video = jnp.asarray(_batches(config, 1, seed=4)[0]['video'])
  teacher = jax.tree.map(jnp.asarray, states[2].teacher)
  mask, metrics = policy(jax.random.PRNGKey(1), 0, video, teacher)
  predicted = np.asarray(model.apply({'params': teacher}, video, method=model.predict_losses))
  hidden = int(np.asarray(mask.mask).sum(1)[0])
  top = np.argsort(-predicted, axis=1, kind='stable')[:, :hidden]
  for b in range(video.shape[0]):
    assert set(np.flatnonzero(np.asarray(mask.mask)[b])) == set(top[b])
  assert float(metrics['hpm/hard_fraction']) == 1.0


def test_loss_predictor_shares_decoder_inputs_and_its_gradient_reaches_the_encoder(hpm_run):
  config, exp, states, _ = hpm_run
  params = jax.tree.map(jnp.asarray, states[0].params)
  assert set(params['loss_predictor']) == {'block0', 'norm', 'pred'}  # own blocks; shares embed/mask/pos
  assert {'decoder_embed', 'mask_token', 'decoder_cls_token'} <= set(params)
  video = jnp.asarray(_batches(config, 1, seed=5)[0]['video'])
  mask = exp.masker(jax.random.PRNGKey(2), video.shape[0])
  lp = objectives.OBJECTIVES['loss_prediction'](config)
  grads = jax.grad(lambda p: lp(exp.model.apply({'params': p}, video, mask), {})[0])(params)
  norm = lambda tree: float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
  assert norm(grads['encoder']) > 0
  assert norm(grads['loss_predictor']) > 0
  assert norm(grads['decoder']) == 0  # true losses are stop-gradient


def test_combined_objectives_one_device_equals_4x2_mesh():
  """Two views, BatchNorm projector, teacher masks, global-batch InfoNCE: the
  same losses, BatchNorm statistics and teacher on 1 device and on 8."""
  c = combined_config()
  batches = _batches(c, 2, views=2)
  _, states_one, one = _train(c, batches, jax.devices()[:1])
  c.mesh.shape = (4, 2, 1)
  _, states_eight, eight = _train(c, batches, jax.devices()[:8])
  for a, b in zip(one, eight):
    for key in ('loss', 'loss/infonce', 'loss/loss_prediction', 'contrastive/accuracy', 'hpm/hard_fraction'):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6)
  assert 0.0 < one[-1]['hpm/hard_fraction']
  bn_one, bn_eight = states_one[-1].model_state, states_eight[-1].model_state
  assert bn_one['batch_stats']['projector']['bn0']['mean'].shape == (64,)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
  jax.tree.map(close, bn_one, bn_eight)
  jax.tree.map(close, states_one[-1].teacher, states_eight[-1].teacher)


def test_contrastive_weight_is_zero_before_start_epoch():
  c = combined_config()
  c.contrastive.start_epoch = 1.0  # 64 samples per epoch / batch 8 = step 8
  objective = objectives.make_objective_fn(c, {'infonce': 8})
  rng = np.random.default_rng(0)
  outputs = {
    'pred': jnp.asarray(rng.standard_normal((4, 6, 5)), jnp.float32),
    'target': jnp.asarray(rng.standard_normal((4, 6, 5)), jnp.float32),
    'mask': jnp.asarray(rng.integers(0, 2, (4, 6)), jnp.float32),
    'pred_loss': jnp.asarray(rng.standard_normal((4, 6)), jnp.float32),
    'projection': jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
  }
  before, m = objective(outputs, {}, 7)
  after, _ = objective(outputs, {}, 8)
  np.testing.assert_allclose(before, m['loss/pixel_mse'] + m['loss/loss_prediction'], rtol=1e-6)
  np.testing.assert_allclose(after, before + 0.5 * m['loss/infonce'], rtol=1e-6)


def test_registry_returns_each_method_for_its_name():
  from tests.conftest import micro_config

  c = micro_config()
  for name in ('mae', 'mae_motion', 'vimpac', 'vqvae'):
    c.model.name = name
    method = methods.get(c)
    assert isinstance(method, methods.Method) and method.name == name
  assert sorted(methods.METHODS) == ['mae', 'mae_motion', 'vimpac', 'vqvae']  # each module registers its own
  kinds = {name: m.has_video_encoder for name, m in methods.METHODS.items()}
  assert kinds == {'mae': True, 'mae_motion': True, 'vimpac': True, 'vqvae': False}
  c.model.name = 'mae'
  pixels = methods.get(c).encoder_input(c)  # VIMPAC's (tokens): tests/evaluate
  assert (pixels.params_key, pixels.example.shape, pixels.tokenizer) == ('encoder', (1, 4, 32, 32, 3), None)
  c.model.name = 'vqvae'
  with pytest.raises(config_lib.ConfigError, match='no video encoder'):
    methods.get(c).encoder_input(c)
  with pytest.raises(ValueError, match="'mae' is empty or taken"):
    methods.register(type('Again', (methods.Method,), {'name': 'mae'}))
  c.model.name = 'bert'
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.name='bert'.*mae.*vimpac.*vqvae"):
    methods.get(c)


def test_evaluation_asks_the_method_for_the_video_encoder():
  """frozen_encoder, classifier, token_grid, feature_width: MAE's ViT, VIMPAC's backbone, none for a VQ-VAE."""
  from configs import vimpac as vimpac_config
  from tests.conftest import micro_config

  c = micro_config()
  mae = methods.get(c)
  encoder = mae.frozen_encoder(c)
  assert encoder.name == 'encoder' and encoder.drop_path_rate == 0.0
  assert encoder.grid == mae.token_grid(c) == (2, 4, 4) and mae.feature_width(c) == encoder.width == 32
  clf = mae.classifier(c, 3, drop_path_rate=0.1, dropout=0.2)
  assert (clf.encoder.drop_path_rate, clf.num_classes, clf.dropout) == (0.1, 3, 0.2)
  assert mae.classifier(c, 3).encoder.drop_path_rate == c.model.drop_path_rate
  v = vimpac_config.get_config('tiny')
  vimpac = methods.get(v)
  backbone = vimpac.frozen_encoder(v)
  assert backbone.name == 'backbone' and backbone.token_shape == vimpac.token_grid(v) == (4, 8, 8)
  assert vimpac.feature_width(v) == v.vimpac.width
  clf = vimpac.classifier(v, 3, drop_path_rate=0.1, dropout=0.2)  # no drop path in its backbone
  assert (clf.backbone.name, clf.num_classes, clf.dropout) == ('backbone', 3, 0.2)
  c.model.name = 'vqvae'
  vqvae = methods.get(c)
  for ask in (vqvae.frozen_encoder, vqvae.token_grid, vqvae.feature_width, lambda c: vqvae.classifier(c, 3)):
    with pytest.raises(config_lib.ConfigError, match="'vqvae' run has no video encoder"):
      ask(c)


def test_bad_method_configs_fail_naming_the_key():
  c = hpm_config()
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'infonce': 0.1})
  with pytest.raises(config_lib.ConfigError, match='data.sampling'):
    config_lib.validate(c)
  c.data.sampling = 'frame_pair'
  with pytest.raises(config_lib.ConfigError, match='data.num_frames'):
    config_lib.validate(c)
  c = hpm_config()
  c.masking.kind = 'tube'
  with pytest.raises(config_lib.ConfigError, match='masking.kind'):
    config_lib.validate(c)
  c = hpm_config()
  c.hpm.selection = 'hardest'
  with pytest.raises(config_lib.ConfigError, match='hpm.selection'):
    config_lib.validate(c)
  c = combined_config()
  c.contrastive.pooling = 'median'
  with pytest.raises(config_lib.ConfigError, match='contrastive.pooling'):
    config_lib.validate(c)


def test_teacher_and_batch_stats_survive_a_checkpoint_round_trip(tmp_path):
  """Resuming restores the EMA teacher and the projector's BatchNorm statistics."""
  c = combined_config()
  exp, states, _ = _train(c, _batches(c, 1, views=2), jax.devices()[:1])
  trained = jax.device_put(states[-1])
  ckpt = checkpointing.Checkpointer(str(tmp_path), keep=1, every_steps=1, asynchronous=False)
  ckpt.save(1, trained, {'position': 1}, force=True)
  restored, data_state = ckpt.restore(1, exp.abstract_state)
  ckpt.close()
  assert data_state == {'position': 1}
  assert restored.model_state['batch_stats']['projector']['bn0']['var'].shape == (64,)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), states[-1])


def test_hpm_picture_adds_the_teachers_heat_map(hpm_run, tmp_path):
  config, exp, states, _ = hpm_run
  batch = _batches(config, 1, seed=6)[0]
  (png, *_) = loop.write_images(exp, jax.device_put(states[0]), str(tmp_path), 2, batch)
  scale = max(1, 128 // config.data.crop_size)
  rows = (Image.open(png).size[1] // scale + 2) // (config.data.crop_size + 2)
  assert rows == 4  # original, masked (hard patches red), reconstruction, predicted-loss heat map
