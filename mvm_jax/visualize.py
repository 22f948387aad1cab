"""Pictures a person would rather look at than read: masks and reconstructions."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image

from mvm_jax.models import vit
from mvm_jax.objectives.pixel_mse import NORM_PIX_EPS

GAP = 2  # pixels between tiles


def denormalize(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Normalized float frames [..., C] → uint8 RGB."""
  pixels = frames * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def reconstruction_rows(pred, target, mask, grid, target_patch, norm_pix: bool):
  """One sample's patches → (original, masked input, reconstruction) frames.

  pred, target: [N, P] (pred in norm-pix space if `norm_pix`); mask: [N], 1 = hidden.
  Returns three float arrays [T', H, W, C] in the data's normalized space; the
  reconstruction shows predicted pixels in hidden patches and the input elsewhere.
  """
  pred, target, mask = (np.asarray(a, np.float32) for a in (pred, target, mask))
  if norm_pix:
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)
    pred = pred * np.sqrt(var + NORM_PIX_EPS) + mean
  hidden = mask[:, None] > 0
  to_frames = lambda patches: np.asarray(vit.unpatchify(patches[None], grid, target_patch))[0]
  original = to_frames(target)
  masked = to_frames(np.where(hidden, np.nan, target))
  recon = to_frames(np.where(hidden, pred, target))
  return original, masked, recon


def tile_rows(rows: Sequence[np.ndarray], scale: int = 1) -> np.ndarray:
  """rows of uint8 frames [T, H, W, C] → one uint8 image, rows × T tiles, white gaps."""
  t, h, w, c = rows[0].shape
  canvas = np.full((len(rows) * (h + GAP) - GAP, t * (w + GAP) - GAP, c), 255, np.uint8)
  for r, frames in enumerate(rows):
    for i in range(t):
      canvas[r * (h + GAP) : r * (h + GAP) + h, i * (w + GAP) : i * (w + GAP) + w] = frames[i]
  if scale > 1:
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
  return canvas


def write_reconstructions(
  directory: str, step: int, outputs: dict, grid, target_patch, norm_pix: bool, mean, std, num_samples: int
) -> list[str]:
  """Write one PNG per sample: original frames / masked input (gray) / reconstruction."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in range(min(num_samples, outputs['pred'].shape[0])):
    original, masked, recon = reconstruction_rows(
      outputs['pred'][i], outputs['target'][i], outputs['mask'][i], grid, target_patch, norm_pix
    )
    masked_u8 = denormalize(np.nan_to_num(masked, nan=0.0), mean, std)
    masked_u8[np.isnan(masked).any(-1)] = 128
    rows = [denormalize(original, mean, std), masked_u8, denormalize(recon, mean, std)]
    scale = max(1, 128 // original.shape[1])
    path = os.path.join(directory, f'reconstruction_step{step:07d}_sample{i}.png')
    Image.fromarray(tile_rows(rows, scale)).save(path)
    paths.append(path)
  return paths
