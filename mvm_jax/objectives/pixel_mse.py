"""`pixel_mse`: MAE pixel reconstruction loss, mean over hidden patches only."""

from __future__ import annotations

import jax.numpy as jnp

from mvm_jax.objectives import registry

NORM_PIX_EPS = 1e-6


def normalize_patches(target, eps: float = NORM_PIX_EPS):
  """Per-patch standardisation (mae_st norm-pix: unbiased variance + eps, 1e-6). [..., P] → [..., P].

  A larger `eps` (`model.norm_pix_eps`) keeps flat, low-contrast patches from
  being blown up to unit variance (their target is then mostly noise).
  """
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, ddof=1, keepdims=True)
  return (target - mean) / jnp.sqrt(var + eps)


def per_patch_mse(pred, target, norm_pix: bool, eps: float = NORM_PIX_EPS):
  """[B, N, P] × [B, N, P] → [B, N] mean squared error per patch."""
  if norm_pix:
    target = normalize_patches(target, eps)
  return jnp.mean(jnp.square(pred - target), axis=-1)


def masked_mean(values, mask):
  """Mean of `values` [B, N] where `mask` [B, N] is 1."""
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


@registry.register('pixel_mse')
def make_pixel_mse(config):
  norm_pix = bool(config.model.norm_pix_loss)
  eps = float(config.model.get('norm_pix_eps', NORM_PIX_EPS))

  def pixel_mse(outputs, batch):
    del batch
    loss = masked_mean(per_patch_mse(outputs['pred'], outputs['target'], norm_pix, eps), outputs['mask'])
    return loss, {}

  return pixel_mse
