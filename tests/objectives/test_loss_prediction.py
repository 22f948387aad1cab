"""mvm_jax.objectives.loss_prediction: HPM's loss-prediction objective against NumPy loops."""

import jax
import ml_collections
import numpy as np
import pytest

from mvm_jax import objectives
from mvm_jax.objectives import loss_prediction


def _config(target='relative_bce', norm_pix=True):
  hpm_config = loss_prediction.default_hpm_config()
  hpm_config.loss_predictor_target = target
  return ml_collections.ConfigDict({'model': {'norm_pix_loss': norm_pix}, 'hpm': hpm_config})


def _np_true_loss(pred, target):
  mean = target.mean(-1, keepdims=True)
  var = target.var(-1, ddof=1, keepdims=True)
  return np.mean((pred - (target - mean) / np.sqrt(var + 1e-6)) ** 2, axis=-1)


def _np_relative_bce(p, loss, mask):
  """Plain double loop: value, d value / d p, pair count."""
  total, count, grad = 0.0, 0, np.zeros_like(p)
  for b in range(p.shape[0]):
    for i in range(p.shape[1]):
      for j in range(p.shape[1]):
        if mask[b, i] and mask[b, j] and loss[b, i] > loss[b, j]:
          s = 1.0 / (1.0 + np.exp(-(p[b, i] - p[b, j])))
          total += -np.log(s + 1e-6)
          g = -s * (1.0 - s) / (s + 1e-6)
          grad[b, i] += g
          grad[b, j] -= g
          count += 1
  return total / count, grad / count, count


@pytest.fixture(scope='module')
def hpm_case():
  rng = np.random.default_rng(0)
  b, n, p = 2, 7, 6
  pred = rng.normal(size=(b, n, p)).astype(np.float32)
  target = rng.normal(size=(b, n, p)).astype(np.float32)
  pred[0, 3], target[0, 3] = pred[0, 1], target[0, 1]  # equal true losses: not a pair
  mask = np.array([[1, 1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 0, 0]], np.float32)
  pred_loss = rng.normal(size=(b, n)).astype(np.float32)
  return {'pred': pred, 'target': target, 'mask': mask, 'pred_loss': pred_loss}


def test_relative_bce_value_and_gradient_match_double_loop(hpm_case):
  fn = objectives.OBJECTIVES['loss_prediction'](_config())

  def loss_of(pred_loss, pred):
    return fn(dict(hpm_case, pred_loss=pred_loss, pred=pred), {})

  (loss, metrics), (grad_p, grad_pred) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(
    hpm_case['pred_loss'], hpm_case['pred']
  )
  true = _np_true_loss(hpm_case['pred'], hpm_case['target'])
  assert true[0, 3] == true[0, 1]
  want, want_grad, count = _np_relative_bce(hpm_case['pred_loss'], true, hpm_case['mask'])
  assert count == 9 + 3  # 5 masked with one tie: 10 - 1 pairs; 3 masked: 3 pairs
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(grad_p, want_grad, rtol=1e-4, atol=1e-7)
  assert float(metrics['hpm/valid_pairs']) == count
  np.testing.assert_array_equal(grad_pred, 0.0)  # true losses are stop-gradient


def test_absolute_mse_matches_numpy(hpm_case):
  fn = objectives.OBJECTIVES['loss_prediction'](_config('absolute_mse', norm_pix=False))
  loss, _ = fn(hpm_case, {})
  true = np.mean((hpm_case['pred'] - hpm_case['target']) ** 2, axis=-1)
  sq, m = [], hpm_case['mask'] > 0
  for b in range(true.shape[0]):
    t = true[b][m[b]]
    standardized = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
    sq.extend((hpm_case['pred_loss'][b][m[b]] - standardized) ** 2)
  np.testing.assert_allclose(loss, np.mean(sq), rtol=1e-5)


def test_rank_correlation_metric(hpm_case):
  fn = objectives.OBJECTIVES['loss_prediction'](_config())
  mask = hpm_case['mask']
  # Monotone in the true loss on masked patches (anything elsewhere): perfect
  # rank agreement. (Ties rank by index, so this case has none.)
  no_tie = dict(hpm_case, pred=hpm_case['pred'] + np.float32(0.1) * np.eye(7, 6, dtype=np.float32))
  true = _np_true_loss(no_tie['pred'], no_tie['target'])
  for sign in (1.0, -1.0):
    pred_loss = np.where(mask > 0, sign * np.exp(true), 100.0 * sign)
    _, metrics = fn(dict(no_tie, pred_loss=pred_loss), {})
    np.testing.assert_allclose(metrics['hpm/loss_rank_corr'], sign, rtol=1e-6)
  # Against scipy on a generic case, averaged over the two samples.
  from scipy import stats

  _, metrics = fn(no_tie, {})
  m, p = mask > 0, no_tie['pred_loss']
  want = np.mean([stats.spearmanr(p[b][m[b]], true[b][m[b]])[0] for b in range(2)])
  np.testing.assert_allclose(metrics['hpm/loss_rank_corr'], want, rtol=1e-5)


def test_unknown_loss_predictor_target_fails():
  with pytest.raises(ValueError, match='loss_predictor_target'):
    objectives.OBJECTIVES['loss_prediction'](_config('ranking'))
