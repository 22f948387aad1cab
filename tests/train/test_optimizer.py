"""mvm_jax.train.optimizer: learning-rate schedules (cosine, linear), weight decay and layer decay."""

import math

import jax.numpy as jnp
import pytest

from configs import vimpac
from mvm_jax import config as config_lib
from mvm_jax.train import optimizer


def test_weight_decay_mask():
  params = {
    'encoder': {
      'pos': {'pos_embed_spatial': jnp.zeros((1, 4, 8))},
      'cls_token': jnp.zeros((1, 1, 8)),
      'norm': {'scale': jnp.zeros(8), 'bias': jnp.zeros(8)},
      'fc': {'kernel': jnp.zeros((8, 8)), 'bias': jnp.zeros(8)},
    }
  }
  default = optimizer.weight_decay_mask(params)
  assert default['encoder']['fc']['kernel'] and default['encoder']['pos']['pos_embed_spatial']
  assert not default['encoder']['fc']['bias'] and not default['encoder']['norm']['scale']
  exempt = optimizer.weight_decay_mask(params, decay_pos_embed=False)
  assert exempt['encoder']['fc']['kernel']
  assert not exempt['encoder']['pos']['pos_embed_spatial'] and not exempt['encoder']['cls_token']


def test_schedule_scales_lr_with_batch_and_warms_up(config):
  config.optim.base_lr = 1e-3
  config.batch_size = 512
  schedule = optimizer.make_schedule(config, total_steps=100, warmup_steps=10)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(2e-3)
  assert float(schedule(5)) == pytest.approx(1e-3)
  assert float(schedule(100)) == pytest.approx(config.optim.min_lr, abs=1e-9)


def test_linear_schedule_values():
  c = vimpac.get_config('tiny')
  assert c.optim.schedule == 'linear'
  c.optim.update(base_lr=1e-3, min_lr=1e-5)
  c.batch_size = 512
  peak, total, warmup = 2e-3, 110, 10
  schedule = optimizer.make_schedule(c, total_steps=total, warmup_steps=warmup)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(peak / 2)
  assert float(schedule(warmup)) == pytest.approx(peak)
  mid = warmup + (total - warmup) // 2
  assert float(schedule(mid)) == pytest.approx((peak + 1e-5) / 2)
  assert float(schedule(mid + 10)) == pytest.approx(peak + (1e-5 - peak) * 60 / 100)
  assert float(schedule(total)) == pytest.approx(1e-5)
  assert float(schedule(total + 50)) == pytest.approx(1e-5)


def test_linear_schedule_without_warmup():
  c = vimpac.get_config('tiny')
  c.batch_size, c.optim.base_lr, c.optim.min_lr = 256, 1e-3, 0.0
  schedule = optimizer.make_schedule(c, total_steps=10, warmup_steps=0)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(0.0, abs=1e-12)


def test_default_schedule_is_cosine():
  c = config_lib.base_config()
  assert c.optim.schedule == 'cosine'
  schedule = optimizer.make_schedule(c, total_steps=100, warmup_steps=10)
  peak = optimizer.peak_learning_rate(c)
  assert float(schedule(55)) == pytest.approx(peak / 2)  # the midpoint of the decay, as a linear one
  # A fifth into the 90 decay steps: cosine's 0.905 of the peak, not linear's 0.8.
  assert float(schedule(28)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.2)))


def test_bad_schedule_fails_naming_the_key(config):
  config_lib.validate(config)
  config.optim.schedule = 'step'
  with pytest.raises(config_lib.ConfigError, match='optim.schedule'):
    config_lib.validate(config)
  with pytest.raises(ValueError, match='optim.schedule'):
    optimizer.make_schedule(config, total_steps=10, warmup_steps=1)


def test_layer_decay_scales():
  params = {
    'encoder': {
      'patch_embed': {'proj': {'kernel': 0}},
      'cls_token': 0,
      'block0': {'w': 0},
      'block2': {'w': 0},
      'norm': {'scale': 0},
    },
    'head': {'kernel': 0},
  }
  scales = optimizer.layer_decay_scales(params, depth=3, decay=0.5)
  assert scales['encoder']['patch_embed']['proj']['kernel'] == 0.5**4
  assert scales['encoder']['cls_token'] == 0.5**4
  assert scales['encoder']['block0']['w'] == 0.5**3
  assert scales['encoder']['block2']['w'] == 0.5**1
  assert scales['encoder']['norm']['scale'] == 1.0 and scales['head']['kernel'] == 1.0
