"""`loss_prediction`: HPM's loss-predictor objective (relative BCE or absolute MSE).

The model's loss predictor outputs one scalar per patch, `outputs['pred_loss']`
[B, N]; its target is the true per-patch reconstruction loss (pixel MSE of
`outputs['pred']` against `outputs['target']`, norm-pix as
`config.model.norm_pix_loss`), stop-gradient, on the masked patches only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mvm_jax.config_schema import fail
from mvm_jax.objectives import registry
from mvm_jax.objectives.pixel_mse import NORM_PIX_EPS, masked_mean, per_patch_mse

TARGETS = ('relative_bce', 'absolute_mse')
BCE_EPS = 1e-6  # inside the log, as in the official code
STD_EPS = 1e-6  # per-sample standardisation of the absolute target


def default_hpm_config() -> ml_collections.ConfigDict:
  """`config.hpm`: HPM defaults (paper / official code).

  loss_predictor_target  'relative_bce' (Eq. 5) | 'absolute_mse' (Eq. 4 ablation).
  Read by the mask policy (`masking.hard_patches`):
    hard_masking True: the EMA teacher's predicted losses pick the masks (HPM);
                 False: random masks with the loss-prediction objective only (ablation).
    selection    'hard' mask the highest predicted loss (argmax) | 'easy' (argmin).
    alpha_manner 'easy_to_hard' α_0 → α_T | 'hard_to_easy' α_T → α_0 | 'fixed' α_T.
    alpha_0, alpha_T  hard share of the masked patches at the start / end; floor(α·M) patches.
    alpha_per_step False: α moves once per epoch, (epoch + 1) / E (official code);
                 True: per step from α_0 (t / T).
    per_frame    same hard count in every temporal slice.
  Read by the EMA teacher (`models.ema.momentum_schedule`):
    ema_momentum → ema_momentum_final linearly over ema_momentum_epochs, then constant.
  """
  return ml_collections.ConfigDict(
    dict(
      loss_predictor_target='relative_bce',
      hard_masking=True,
      selection='hard',
      alpha_manner='easy_to_hard',
      alpha_0=0.0,
      alpha_T=0.5,
      alpha_per_step=False,
      per_frame=False,
      ema_momentum=0.999,
      ema_momentum_final=0.9999,
      ema_momentum_epochs=100,
    )
  )


def validate_hpm_config(config) -> None:
  """ConfigError naming the key for an invalid `config.hpm`, or a masking it cannot pick from."""
  from mvm_jax.masking import hard_patches

  h = config.hpm
  if h.hard_masking and 'loss_prediction' in config.objectives and config.masking.kind != 'random':
    fail('masking.kind', f'HPM hard-patch masking replaces random masking; got {config.masking.kind!r}')
  if h.selection not in hard_patches.SELECTIONS:
    fail('hpm.selection', f'{h.selection!r}; valid: {list(hard_patches.SELECTIONS)}')
  if h.alpha_manner not in hard_patches.ALPHA_MANNERS:
    fail('hpm.alpha_manner', f'{h.alpha_manner!r}; valid: {list(hard_patches.ALPHA_MANNERS)}')
  for key in ('alpha_0', 'alpha_T', 'ema_momentum', 'ema_momentum_final'):
    if not 0.0 <= h[key] <= 1.0:
      fail(f'hpm.{key}', f'{h[key]} is outside [0, 1]')
  if h.loss_predictor_target not in TARGETS:
    fail('hpm.loss_predictor_target', f'{h.loss_predictor_target!r}; valid: {list(TARGETS)}')


def relative_bce(pred_loss, true_loss, mask):
  """HPM's relative loss over ordered pairs of masked patches of one sample.

  For every (b, i, j) with both patches masked and true_i > true_j:
  -log(σ(p_i - p_j) + 1e-6), summed over the whole batch and divided by the
  global count of such pairs (ties are not pairs).

  Args:
    pred_loss: [B, N] predicted loss p.
    true_loss: [B, N] true per-patch loss (the caller stops its gradient).
    mask: [B, N] 1 = masked.

  Returns:
    (loss scalar, number of valid pairs as float32).
  """
  masked = mask > 0
  valid = masked[:, :, None] & masked[:, None, :] & (true_loss[:, :, None] > true_loss[:, None, :])
  diff = pred_loss[:, :, None] - pred_loss[:, None, :]  # [B, N, N]: p_i - p_j
  terms = jnp.where(valid, -jnp.log(jax.nn.sigmoid(diff) + BCE_EPS), 0.0)
  count = jnp.sum(valid, dtype=jnp.float32)
  return jnp.sum(terms) / jnp.maximum(count, 1.0), count


def standardize_masked(values, mask):
  """Per-sample (v - mean) / sqrt(var + 1e-6) over masked entries; var unbiased.

  [B, N] × [B, N] → [B, N] (unmasked entries are returned but meaningless).
  """
  count = jnp.sum(mask, axis=-1, keepdims=True)
  mean = jnp.sum(values * mask, axis=-1, keepdims=True) / jnp.maximum(count, 1.0)
  var = jnp.sum(jnp.square(values - mean) * mask, axis=-1, keepdims=True) / jnp.maximum(count - 1.0, 1.0)
  return (values - mean) / jnp.sqrt(var + STD_EPS)


def absolute_mse(pred_loss, true_loss, mask):
  """Mean over masked patches of (p - standardized true loss)²; [B, N] inputs → scalar."""
  return masked_mean(jnp.square(pred_loss - standardize_masked(true_loss, mask)), mask)


def rank_correlation(x, y, mask):
  """Spearman correlation of x and y over each sample's masked entries, averaged
  over samples that have at least two. [B, N] × [B, N] × [B, N] → scalar.

  Ranks among masked entries (ties broken by index); unmasked entries sort last.
  """
  masked = mask > 0

  def ranks(v):
    v = jnp.where(masked, v, jnp.inf)
    return jnp.argsort(jnp.argsort(v, axis=-1, stable=True), axis=-1).astype(jnp.float32)

  weights = masked.astype(jnp.float32)
  count = jnp.sum(weights, axis=-1)
  rx, ry = ranks(x), ranks(y)
  mean = (count[:, None] - 1.0) / 2.0  # ranks of the masked entries are 0..count-1
  dx, dy = (rx - mean) * weights, (ry - mean) * weights
  cov = jnp.sum(dx * dy, axis=-1)
  var = jnp.sum(dx * dx, axis=-1)  # equal for x and y: both are 0..count-1
  ok = count >= 2
  corr = jnp.where(ok, cov / jnp.where(ok, var, 1.0), 0.0)
  return jnp.sum(corr) / jnp.maximum(jnp.sum(ok), 1)


@registry.register('loss_prediction')
def make_loss_prediction(config):
  """Needs outputs 'pred' [B, N, P], 'target' [B, N, P], 'mask' [B, N] (1 = masked)
  and 'pred_loss' [B, N] (the student's loss predictor). Reads
  config.model.norm_pix_loss and config.hpm.loss_predictor_target.

  Metrics: hpm/loss_rank_corr (Spearman, predicted vs true, masked patches,
  mean over samples) and, for relative_bce, hpm/valid_pairs (global count).
  """
  norm_pix = bool(config.model.norm_pix_loss)
  eps = float(config.model.get('norm_pix_eps', NORM_PIX_EPS))
  target_kind = config.hpm.loss_predictor_target
  if target_kind not in TARGETS:
    raise ValueError(f'config.hpm.loss_predictor_target={target_kind!r}; valid: {TARGETS}')

  def loss_prediction(outputs, batch):
    del batch
    mask = outputs['mask'].astype(jnp.float32)
    true_loss = jax.lax.stop_gradient(per_patch_mse(outputs['pred'], outputs['target'], norm_pix, eps))
    pred_loss = outputs['pred_loss'].astype(jnp.float32)
    metrics = {}
    if target_kind == 'relative_bce':
      loss, metrics['hpm/valid_pairs'] = relative_bce(pred_loss, true_loss, mask)
    else:
      loss = absolute_mse(pred_loss, true_loss, mask)
    metrics['hpm/loss_rank_corr'] = rank_correlation(jax.lax.stop_gradient(pred_loss), true_loss, mask)
    return loss, metrics

  return loss_prediction
