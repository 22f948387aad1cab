"""Mixup and CutMix for video batches (timm semantics, one λ per batch), on device."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smooth_one_hot(labels, num_classes: int, smoothing: float):
  """int [B] → float [B, K]: 1 − ε + ε/K on the label, ε/K elsewhere."""
  off = smoothing / num_classes
  return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off


def cutmix_box(rng, height: int, width: int, lam):
  """A box covering about 1 − λ of the frame, centre uniform, clipped: → bool [H, W] (True = pasted)."""
  cut = jnp.sqrt(1.0 - lam)
  cut_h, cut_w = (height * cut).astype(jnp.int32), (width * cut).astype(jnp.int32)
  cy_rng, cx_rng = jax.random.split(rng)
  cy = jax.random.randint(cy_rng, (), 0, height)
  cx = jax.random.randint(cx_rng, (), 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  top, bottom = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
  left, right = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def mix_batch(
  rng, video, targets, *, mixup_alpha: float, cutmix_alpha: float, switch_prob: float, prob: float
):
  """Mix each sample with the batch reversed, as timm's Mixup in 'batch' mode.

  video [B, T, H, W, C], targets [B, K] → (mixed video, mixed targets). With
  probability `prob` a mix happens: CutMix (box pasted into every frame, the
  same box for the whole clip) with probability `switch_prob` when both are
  on, else Mixup. λ ~ Beta(α, α); for CutMix λ is corrected to the box's area.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    return video, targets
  apply_rng, switch_rng, mix_lam_rng, cut_lam_rng, box_rng = jax.random.split(rng, 5)
  height, width = video.shape[2], video.shape[3]
  use_cutmix = jnp.asarray(cutmix_alpha > 0)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.bernoulli(switch_rng, switch_prob)
  lam_mix = jax.random.beta(mix_lam_rng, max(mixup_alpha, 1e-3), max(mixup_alpha, 1e-3))
  lam_cut = jax.random.beta(cut_lam_rng, max(cutmix_alpha, 1e-3), max(cutmix_alpha, 1e-3))
  box = cutmix_box(box_rng, height, width, lam_cut)
  lam_box = 1.0 - box.mean()
  flipped = video[::-1]
  cut_video = jnp.where(box[None, None, :, :, None], flipped, video)
  mix_video = lam_mix * video + (1.0 - lam_mix) * flipped
  lam = jnp.where(use_cutmix, lam_box, lam_mix)
  mixed = jnp.where(use_cutmix, cut_video, mix_video)
  apply = jax.random.bernoulli(apply_rng, prob)
  lam = jnp.where(apply, lam, 1.0)
  video = jnp.where(apply, mixed, video)
  return video.astype(flipped.dtype), lam * targets + (1.0 - lam) * targets[::-1]


def finetune_token_keep(rng, batch_size: int, num_tokens: int, ratio):
  """Random token dropping at a (traced) ratio: → bool [B, N], True = kept.

  Keeps the first round(N · (1 − ratio)) tokens of a random order per sample,
  so the ratio may change every step without changing shapes.
  """
  order = jnp.argsort(jax.random.uniform(rng, (batch_size, num_tokens)), axis=1)
  ranks = jnp.argsort(order, axis=1)
  num_keep = jnp.maximum(1, jnp.round(num_tokens * (1.0 - ratio))).astype(jnp.int32)
  return ranks < num_keep
