"""mvm_jax.train.loop: sharding equality, gradient accumulation, checkpoints, resume, NaN stop."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax import objectives
from mvm_jax.train import checkpointing, loop


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.batch_size, config.data.num_frames, config.data.crop_size, config.data.crop_size, 3)
  return [
    {'video': rng.standard_normal(shape).astype(np.float32), 'label': np.zeros(config.batch_size, np.int32)}
    for _ in range(n)
  ]


def _losses(config, batches, devices):
  exp, state = loop.build_experiment(config, samples_per_epoch=64, devices=devices)
  losses = []
  for host_batch in batches:
    state, metrics = exp.train_step(state, loop.global_batch(host_batch, exp.batch_sharding))
    losses.append(float(metrics['loss']))
  return np.array(losses), jax.device_get(state.params)


def test_one_device_and_4x2_mesh_give_the_same_losses(config):
  assert jax.device_count() >= 8, 'conftest sets 8 fake CPU devices'
  batches = _batches(config, 3)
  one, params_one = _losses(config, batches, jax.devices()[:1])
  config.mesh.shape = (4, 2, 1)
  eight, params_eight = _losses(config, batches, jax.devices()[:8])
  assert one[-1] < one[0]
  np.testing.assert_allclose(eight, one, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), params_one, params_eight)


def test_parameters_are_sharded_over_fsdp(config):
  config.mesh.shape = (4, 2, 1)
  _, state = loop.build_experiment(config, samples_per_epoch=64, devices=jax.devices()[:8])
  kernel = state.params['encoder']['block0']['mlp']['fc1']['kernel']
  assert kernel.sharding.spec[0] == 'fsdp'
  assert kernel.addressable_shards[0].data.shape[0] == kernel.shape[0] // 2


def test_gradient_accumulation_matches_full_batch(config):
  batches = _batches(config, 2)
  full, params_full = _losses(config, batches, jax.devices()[:1])
  config.optim.grad_accum_steps = 4
  accumulated, params_acc = _losses(config, batches, jax.devices()[:1])
  np.testing.assert_allclose(accumulated, full, rtol=1e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), params_full, params_acc)


def _run(config, workdir, **kw):
  return loop.train_and_evaluate(config, str(workdir), **kw)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  from tests.conftest import micro_config

  workdir = tmp_path_factory.mktemp('uninterrupted')
  return workdir, _run(micro_config(), workdir)


def test_run_writes_checkpoints_events_and_pictures(uninterrupted):
  workdir, result = uninterrupted
  assert result['step'] == 6 and len(result['losses']) == 6
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4', '6']
  assert glob.glob(str(workdir / 'events.out.tfevents.*'))
  assert glob.glob(str(workdir / 'images' / 'reconstruction_step0000006_sample0.png'))
  assert {'loss', 'lr', 'grad_norm', 'perf/clips_per_s', 'perf/mfu'} <= set(result['history'][-1])


def test_interrupted_and_resumed_run_reproduces_uninterrupted_losses(config, tmp_path, uninterrupted):
  _, full = uninterrupted
  first = _run(config, tmp_path, stop_after_steps=3)
  assert first['step'] == 3
  assert checkpointing.Checkpointer(str(tmp_path / 'checkpoints'), keep=3, every_steps=2).latest_step() == 3
  second = _run(config, tmp_path)
  assert second['step'] == 6
  np.testing.assert_array_equal(first['losses'] + second['losses'], full['losses'])


@objectives.register('test_nan')
def _nan_objective(config):
  return lambda outputs, batch: (jnp.float32(jnp.nan), {})


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(config, tmp_path):
  config.total_steps = 2
  _run(config, tmp_path)
  config.total_steps = 6
  config.objectives = {'pixel_mse': 1.0, 'test_nan': 1.0}
  # No log step before the end: only the check made before each checkpoint (step 4) sees the NaN
  # of step 3 (the loop fetches metrics only at log and checkpoint steps), and names step 3.
  config.log_every_steps = 1000
  with pytest.raises(loop.NonFiniteLossError, match='step 3'):
    _run(config, tmp_path)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
