"""The worked example of a fifth method (mvm_jax/methods/mae_motion.py): MAE-ST whose target is the
difference of frames. Its target against a NumPy reference, its config, a few training steps, and a
run of `mvm_jax.main` that the frozen evaluations read like an MAE-ST run."""

import jax
import numpy as np
import pytest

from configs import knn, mae_motion
from mvm_jax import config as config_lib
from mvm_jax import config_schema, methods, runs
from mvm_jax.evaluate import frozen
from mvm_jax.methods import mae as mae_method
from mvm_jax.methods import mae_motion as method_lib
from mvm_jax.train import loop
from tests.conftest import MICRO_FLAGS, micro_config, run_module


def motion_micro_config(frame_gap=1):
  """conftest's micro config (4×32×32 clips, patch 2×8×8, 2 predicted frames) as a mae_motion run."""
  c = micro_config()
  with c.unlocked():
    c.model.name = 'mae_motion'
    c.motion = method_lib.default_motion_config()
  c.motion.frame_gap = frame_gap
  config_lib.validate(c)
  return c


def reference_target(video, pred_t_dim, frame_gap, patch):
  """Straightforward NumPy: at each predicted frame f = floor(linspace(0, T-1, pred_t_dim)), the
  difference x[j + gap] - x[j], j = min(f, T-1-gap); cut into p×p patches, (t, h, w) token order,
  (pixel row, pixel column, channel) within a patch (one predicted frame per token here)."""
  b, t, h, w, c = video.shape
  out = []
  for f in np.floor(np.linspace(0, t - 1, pred_t_dim)).astype(int):
    j = min(f, t - 1 - frame_gap)
    diff = video[:, j + frame_gap] - video[:, j]
    for y in range(0, h, patch):
      for x in range(0, w, patch):
        out.append(diff[:, y : y + patch, x : x + patch].reshape(b, -1))
  return np.stack(out, axis=1)


def moving_bars(batch, frames, size, seed=0):
  """uint8 clips of a white vertical bar moving 1-3 pixels a frame from a random start."""
  rng = np.random.default_rng(seed)
  video = np.zeros((batch, frames, size, size, 3), np.uint8)
  for i in range(batch):
    speed, start = rng.integers(1, 4), rng.integers(0, size)
    for t in range(frames):
      x = (start + speed * t) % size
      video[i, t, :, max(0, x - 3) : x + 3] = 255
  return video


@pytest.fixture(scope='module')
def motion_run():
  """Six steps of the micro config on one batch of moving bars: (config, exp, first state, metrics)."""
  c = motion_micro_config()
  exp, state = loop.build_experiment(c, samples_per_epoch=64, devices=jax.devices()[:1])
  first = jax.device_get(state)  # the step donates its input state
  batch = loop.global_batch({'video': moving_bars(c.batch_size, 4, 32)}, exp.batch_sharding)
  history = []
  for _ in range(6):
    state, metrics = exp.train_step(state, batch)
    history.append(jax.device_get(metrics))
  return c, exp, first, history


@pytest.mark.parametrize('frame_gap', [1, 2, 3])
def test_target_is_the_difference_of_frames_frame_gap_apart(frame_gap):
  c = motion_micro_config(frame_gap)
  model = methods.get(c).model(c)
  assert isinstance(model, method_lib.MotionAutoencoder) and model.frame_gap == frame_gap
  video = np.random.default_rng(0).standard_normal((2, 4, 32, 32, 3)).astype(np.float32)
  got = np.asarray(model.targets(video))  # no parameters: the target is a function of the clip
  np.testing.assert_array_equal(got, reference_target(video, c.model.pred_t_dim, frame_gap, 8))


def test_the_objective_sees_the_motion_target_not_the_pixels(motion_run):
  c, exp, state, _ = motion_run
  assert isinstance(exp.model, method_lib.MotionAutoencoder)
  video = exp.inputs.normalize(moving_bars(2, 4, 32, seed=1))
  mask = exp.masker(jax.random.PRNGKey(0), 2)
  outputs = jax.jit(exp.model.apply)({'params': state.params}, video, mask)
  np.testing.assert_allclose(
    outputs['target'], reference_target(np.asarray(video), c.model.pred_t_dim, 1, 8), atol=1e-6
  )
  pixels = mae_method.autoencoder(c).targets(video)  # MAE-ST's target: the frames themselves
  assert np.abs(outputs['target'] - pixels).max() > 1.0
  still = np.repeat(video[:, :1], 4, axis=1)  # a clip that does not move: a zero target
  assert not np.asarray(exp.model.targets(still)).any()


def test_training_on_moving_bars_lowers_the_loss(motion_run):
  _, _, _, history = motion_run
  losses = [float(m['loss/pixel_mse']) for m in history]
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses


def test_config_carries_its_sections_and_names_its_key():
  def sections(c):
    return set(c) - set(config_schema.base_config())

  for preset in ('tiny', 'small_data'):
    c = mae_motion.get_config(preset)
    assert c.model.name == 'mae_motion' and sections(c) == {'masking', 'motion'}
    config_lib.validate(c)
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'loss_prediction': 1.0})  # HPM on motion: MAE's objectives
  assert sections(c) == {'masking', 'motion', 'hpm'}
  for gap in (0, 8):
    c = mae_motion.get_config('tiny')
    c.motion.frame_gap = gap
    with pytest.raises(config_lib.ConfigError, match=r'config\.motion\.frame_gap'):
      config_lib.validate(c)
  c = mae_motion.get_config('tiny')
  with c.unlocked():
    del c['motion']
  with pytest.raises(config_lib.ConfigError, match=r'config\.motion: .*configs/mae_motion\.py'):
    config_lib.validate(c)
  with pytest.raises(ValueError, match='vit_b'):
    mae_motion.get_config('vit_b')


def test_main_trains_it_and_the_frozen_evaluations_read_the_run(tmp_path):
  """`python -m mvm_jax.main --config configs/mae_motion.py:tiny` (micro model, 2 steps), then the
  encoder of the run as the k-NN / probe / fine-tuning entry points load it (about 20 s on 2 cores)."""
  workdir = str(tmp_path / 'run')
  result = run_module(
    'mvm_jax.main',
    '--config',
    'configs/mae_motion.py:tiny',
    '--workdir',
    workdir,
    *MICRO_FLAGS,
    '--config.total_steps=2',
    '--config.checkpoint_every_steps=2',
    '--config.async_checkpointing=False',
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'MAE reconstructing frame differences' in result.stderr
  assert (
    'train: 2/2 steps (100.0%)' in result.stderr and 'clips/s | elapsed' in result.stderr
  )  # progress, ETA
  assert methods.load_run_config(workdir).motion.frame_gap == 1

  probe = knn.get_config('tiny')  # k-NN; the linear probe and fine-tuning resolve a run the same way
  probe.init_from = workdir
  probe.mesh.shape = (1, 1, 1)
  encoder = frozen.load(probe, devices=jax.devices()[:1])
  assert encoder.config.model.name == 'mae_motion' and encoder.step == 2
  assert encoder.config.motion.frame_gap == 1  # the run's section, brought along (run_sections)
  _, params = runs.latest_params(workdir)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(encoder.params), params['encoder'])
