"""mvm_jax.masking.hard_patches: HPM's easy-to-hard masks and their alpha schedule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.masking import hard_patches as hpm

# --- masks ------------------------------------------------------

GRID = (2, 3, 4)  # N = 24, 12 patches per frame
NUM_KEEP = 6  # 18 masked
# Less LLVM optimization: a third of the CPU compile time, same results.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def test_alpha_schedule():
  sched = functools.partial(hpm.alpha_schedule, total_steps=100, alpha_0=0.0, alpha_T=0.5)
  np.testing.assert_allclose([sched(s) for s in (0, 40, 100, 150)], [0.0, 0.2, 0.5, 0.5], atol=1e-7)
  reverse = [sched(s, manner='hard_to_easy') for s in (0, 40, 100)]
  np.testing.assert_allclose(reverse, [0.5, 0.3, 0.0], atol=1e-7)
  np.testing.assert_allclose([sched(s, manner='fixed') for s in (0, 100)], [0.5, 0.5])
  with pytest.raises(ValueError, match='alpha_manner'):
    sched(0, manner='linear')


def test_alpha_schedule_per_epoch_is_the_official_one():
  """HPM's code: α = α_0 + (epoch + 1) / E · (α_T - α_0), constant within an epoch."""
  sched = functools.partial(hpm.alpha_schedule, total_steps=100, alpha_0=0.0, alpha_T=0.5, steps_per_epoch=10)
  np.testing.assert_allclose([sched(s) for s in (0, 9, 10, 55, 99, 140)], [0.05, 0.05, 0.1, 0.3, 0.5, 0.5])
  # 200 epochs, epoch 149 (the 150th): 0.375.
  np.testing.assert_allclose(hpm.alpha_schedule(149 * 7 + 3, 200 * 7, steps_per_epoch=7), 0.375, rtol=1e-6)


def test_hard_count_is_floored_as_the_official_code():
  """α·M = 0.75 · 18 = 13.5: 13 hard patches (int(α·M)), not round's 14; and an α
  computed in float32 that should give an integer count still does."""
  loss = jax.random.normal(jax.random.key(2), (3, 24))
  _, hard = hpm.hard_patch_mask(jax.random.key(0), loss, NUM_KEEP, 0.75)
  np.testing.assert_array_equal(np.asarray(hard).sum(-1), 13)
  alpha = hpm.alpha_schedule(10, 14, alpha_0=0.0, alpha_T=0.7, steps_per_epoch=1)  # 11/14 · 0.7 = 0.55
  assert float(alpha) * 20 < 11  # float32 lands just under 11
  _, hard = hpm.hard_patch_mask(jax.random.key(0), jax.random.normal(jax.random.key(3), (2, 40)), 20, alpha)
  np.testing.assert_array_equal(np.asarray(hard).sum(-1), 11)  # int(0.55 · 20) in float64


@functools.cache
def _masks():
  """All masking cases, compiled once."""
  loss = jax.random.normal(jax.random.key(1), (4, 24))
  same_loss = jnp.broadcast_to(loss[:1], (4000, 24))

  def cases(rng, step, loss, same_loss):  # arrays as arguments: XLA would constant-fold the sorts
    mask = functools.partial(hpm.hard_patch_mask, rng, num_keep=NUM_KEEP)
    return {
      'hard': mask(loss, alpha=0.5),
      'easy': mask(loss, alpha=0.5, selection='easy'),
      'none': mask(loss, alpha=0.0),
      'all': mask(loss, alpha=1.0),
      'frame': mask(loss, alpha=2 / 3, per_frame=True, grid=GRID),
      'traced': mask(loss, alpha=hpm.alpha_schedule(step, 100)),  # 0.2 at step 40
      'many': mask(same_loss, alpha=0.5),
    }

  return np.asarray(loss), jax.jit(cases, compiler_options=FAST_COMPILE)(
    jax.random.key(0), 40, loss, same_loss
  )


def _check_mask(m, hard, want_hard):
  mask = np.asarray(m.mask)
  np.testing.assert_array_equal(mask.sum(-1), 24 - NUM_KEEP)  # exact masked count
  assert np.all(np.take_along_axis(mask, np.asarray(m.ids_keep), -1) == 0)
  hard = np.asarray(hard)
  assert np.all(mask[hard] == 1)  # hard ⊂ masked
  np.testing.assert_array_equal(hard, want_hard)


def _top(values, k):
  """[B, L] bool: the k highest of each row."""
  out = np.zeros(values.shape, bool)
  np.put_along_axis(out, np.argsort(-values, -1)[:, :k], True, -1)
  return out


def test_hard_set_is_the_highest_predicted_loss():
  loss, got = _masks()
  _check_mask(*got['hard'], _top(loss, 9))  # floor(0.5 · 18)
  _check_mask(*got['none'], np.zeros_like(loss, bool))
  _check_mask(*got['all'], _top(loss, 18))
  _check_mask(*got['traced'], _top(loss, 3))  # floor(0.2 · 18 = 3.6) = 3
  np.testing.assert_array_equal(np.asarray(got['all'][0].mask) > 0, _top(loss, 18))


def test_easy_selection_picks_the_lowest():
  loss, got = _masks()
  _check_mask(*got['easy'], _top(-loss, 9))


def test_per_frame_same_hard_count_in_every_frame():
  loss, got = _masks()
  per_frame = loss.reshape(4, 2, 12)
  want = np.stack([_top(per_frame[:, t], 6) for t in range(2)], axis=1).reshape(4, 24)
  _check_mask(*got['frame'], want)  # floor(2/3 · 18 / 2) = 6 per frame


def test_rest_of_masked_set_is_uniform():
  loss, got = _masks()
  m, hard = got['many']
  hard = np.asarray(hard)
  np.testing.assert_array_equal(hard, np.broadcast_to(_top(loss[:1], 9), hard.shape))
  rest = ~hard[0]  # 15 patches share the 9 random masked slots: p = 0.6 each
  freq = np.asarray(m.mask)[:, rest].mean(0)
  np.testing.assert_allclose(freq, 0.6, atol=0.04)
  metrics = hpm.hard_mask_metrics(0.5, got['hard'][1], got['hard'][0].mask)
  np.testing.assert_allclose(metrics['hpm/hard_fraction'], 0.5)
  np.testing.assert_allclose(metrics['hpm/alpha'], 0.5)


def test_hard_patch_mask_argument_errors():
  loss = jnp.zeros((2, 24))
  with pytest.raises(ValueError, match='selection'):
    hpm.hard_patch_mask(jax.random.key(0), loss, NUM_KEEP, 0.5, selection='argmax')
  with pytest.raises(ValueError, match='per_frame'):
    hpm.hard_patch_mask(jax.random.key(0), loss, NUM_KEEP, 0.5, per_frame=True)
