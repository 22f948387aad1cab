"""mvm_jax.models.ema: the EMA teacher's update and momentum schedule."""

import functools

import jax.numpy as jnp
import numpy as np

from mvm_jax.models import ema


def test_ema_update_is_the_formula():
  rng = np.random.default_rng(0)
  teacher = {'a': rng.normal(size=(3, 2)).astype(np.float32), 'b': {'c': np.float32(2.0)}}
  student = {'a': rng.normal(size=(3, 2)).astype(np.float32), 'b': {'c': np.float32(-1.0)}}
  new = ema.ema_update(teacher, student, 0.9)
  np.testing.assert_allclose(new['a'], 0.9 * teacher['a'] + 0.1 * student['a'], rtol=1e-6)
  np.testing.assert_allclose(new['b']['c'], 0.9 * 2.0 - 0.1, rtol=1e-6)
  assert new['a'].dtype == jnp.float32


def test_momentum_schedule_endpoints():
  sched = functools.partial(ema.momentum_schedule, steps_per_epoch=10, m0=0.999, m1=0.9999, epochs=100)
  got = [float(sched(s)) for s in (0, 500, 1000, 5000)]
  np.testing.assert_allclose(got, [0.999, 0.99945, 0.9999, 0.9999], rtol=1e-7)
