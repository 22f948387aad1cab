"""mvm_jax.evaluate.mixup: label smoothing, Mixup/CutMix, token keep masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.evaluate import mixup


def test_smooth_one_hot():
  t = mixup.smooth_one_hot(jnp.array([1, 0]), 4, 0.1)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(t[0], [0.025, 0.925, 0.025, 0.025], rtol=1e-6)


@pytest.mark.parametrize('mix,cut', [(0.8, 0.0), (0.0, 1.0)])
def test_mix_batch_is_a_convex_mix_consistent_with_the_targets(mix, cut):
  rng = jax.random.PRNGKey(3)
  video = jax.random.normal(rng, (4, 2, 8, 8, 3))
  targets = jax.nn.one_hot(jnp.arange(4), 4)
  mixed, mixed_targets = mixup.mix_batch(
    jax.random.PRNGKey(0), video, targets, mixup_alpha=mix, cutmix_alpha=cut, switch_prob=0.5, prob=1.0
  )
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  lam = float(mixed_targets[0, 0])  # sample 0 mixed with sample 3 (the reversed batch)
  assert float(mixed_targets[0, 3]) == pytest.approx(1 - lam, abs=1e-6)
  if cut:  # pixels come from one of the two clips, the same box in every frame; λ = unpasted share
    from_self = np.isclose(mixed[0], video[0]).all(-1)
    assert (from_self[0] == from_self[1]).all()
    assert from_self.mean() == pytest.approx(lam, abs=1e-6)
  else:
    np.testing.assert_allclose(mixed[0], lam * video[0] + (1 - lam) * video[3], rtol=1e-5, atol=1e-5)


def test_mix_batch_with_prob_zero_changes_nothing():
  video = jnp.ones((2, 1, 4, 4, 3))
  targets = jax.nn.one_hot(jnp.arange(2), 2)
  out, t = mixup.mix_batch(
    jax.random.PRNGKey(0), video, targets, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.0
  )
  np.testing.assert_array_equal(out, video)
  np.testing.assert_array_equal(t, targets)


@pytest.mark.parametrize('ratio', [0.0, 0.5, 0.75])
def test_token_keep_count_follows_the_ratio(ratio):
  keep = mixup.finetune_token_keep(jax.random.PRNGKey(0), 3, 64, jnp.float32(ratio))
  np.testing.assert_array_equal(keep.sum(1), round(64 * (1 - ratio)))
