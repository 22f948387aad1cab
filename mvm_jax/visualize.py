"""Pictures a person would rather look at than read: masks, reconstructions, loss maps."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from mvm_jax.models import vit
from mvm_jax.objectives.pixel_mse import NORM_PIX_EPS

GAP = 2  # pixels between tiles


def denormalize(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """Normalized float frames [..., C] → uint8 RGB."""
  pixels = frames * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
  return (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def reconstruction_rows(
  pred, target, mask, grid, target_patch, norm_pix: bool, norm_pix_eps: float = NORM_PIX_EPS
):
  """One sample's patches → (original, masked input, reconstruction) frames.

  pred, target: [N, P] (pred in norm-pix space if `norm_pix`); mask: [N], 1 = hidden.
  Returns three float arrays [T', H, W, C] in the data's normalized space; the
  reconstruction shows predicted pixels in hidden patches and the input elsewhere.
  """
  pred, target, mask = (np.asarray(a, np.float32) for a in (pred, target, mask))
  if norm_pix:
    mean = target.mean(-1, keepdims=True)
    var = target.var(-1, ddof=1, keepdims=True)
    pred = pred * np.sqrt(var + norm_pix_eps) + mean
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


def heat_colors(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1], any shape → uint8 RGB [..., 3] (matplotlib's 'magma': dark = low)."""
  from matplotlib import colormaps

  return (colormaps['magma'](np.clip(values, 0.0, 1.0))[..., :3] * 255.0 + 0.5).astype(np.uint8)


def patch_values_to_frames(values, grid, target_patch) -> np.ndarray:
  """One value per patch [N] → frames [T', H, W] with each patch filled by its value."""
  patch_size = int(np.prod(target_patch))
  patches = np.repeat(np.asarray(values, np.float32)[:, None], patch_size, axis=1)
  return np.asarray(vit.unpatchify(patches[None], grid, target_patch, channels=1))[0, ..., 0]


HARD_COLOR = np.array([220, 40, 40], np.uint8)  # hidden because the teacher predicted a high loss
HIDDEN_GRAY = 128


def write_reconstructions(
  directory: str,
  step: int,
  outputs: dict,
  grid,
  target_patch,
  norm_pix: bool,
  mean,
  std,
  num_samples: int,
  predicted_loss=None,
  hard=None,
  norm_pix_eps: float = NORM_PIX_EPS,
) -> list[str]:
  """Write one PNG per sample: original frames / masked input (gray) / reconstruction.

  With HPM's `predicted_loss` [n, N] (the teacher's, on the unmasked clip)
  and `hard` [n, N] bool, a fourth row shows the predicted loss as a heat map
  (per sample min → max, bright = hard) and the masked-input row paints the
  patches hidden because of it red (the rest of the hidden ones gray).
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in range(min(num_samples, outputs['pred'].shape[0])):
    original, masked, recon = reconstruction_rows(
      outputs['pred'][i],
      outputs['target'][i],
      outputs['mask'][i],
      grid,
      target_patch,
      norm_pix,
      norm_pix_eps,
    )
    masked_u8 = denormalize(np.nan_to_num(masked, nan=0.0), mean, std)
    masked_u8[np.isnan(masked).any(-1)] = HIDDEN_GRAY
    if hard is not None:
      masked_u8[patch_values_to_frames(hard[i], grid, target_patch) > 0.5] = HARD_COLOR
    rows = [denormalize(original, mean, std), masked_u8, denormalize(recon, mean, std)]
    if predicted_loss is not None:
      loss = np.asarray(predicted_loss[i], np.float32)
      span = max(float(loss.max() - loss.min()), 1e-12)
      rows.append(heat_colors(patch_values_to_frames((loss - loss.min()) / span, grid, target_patch)))
    scale = max(1, 128 // original.shape[1])
    path = os.path.join(directory, f'reconstruction_step{step:07d}_sample{i}.png')
    Image.fromarray(tile_rows(rows, scale)).save(path)
    paths.append(path)
  return paths


def write_frame_reconstructions(directory: str, step: int, video, recon, mean, std) -> list[str]:
  """One PNG per sample: original frames above their reconstructions (VQ-VAE).

  video, recon: [n, T, H, W, 3] in the data's normalized space.
  """
  os.makedirs(directory, exist_ok=True)
  paths = []
  for i in range(video.shape[0]):
    rows = [denormalize(np.asarray(x[i], np.float32), mean, std) for x in (video, recon)]
    path = os.path.join(directory, f'reconstruction_step{step:07d}_sample{i}.png')
    Image.fromarray(tile_rows(rows, max(1, 128 // video.shape[2]))).save(path)
    paths.append(path)
  return paths


MASK_GRAY = np.array([128, 128, 128], np.uint8)
RIGHT_COLOR = np.array([40, 180, 60], np.uint8)
WRONG_COLOR = np.array([220, 40, 40], np.uint8)


def code_colors(vocab_size: int) -> np.ndarray:
  """A fixed random colour per code [V + 1, 3] uint8; row V (any special id) is black."""
  colors = np.random.default_rng(0).integers(0, 256, (vocab_size + 1, 3), dtype=np.uint8)
  colors[vocab_size] = 0
  return colors


def write_token_predictions(directory: str, step: int, tokens, mask, predicted, vocab_size: int, frames=None):
  """One PNG per sample (VIMPAC): rows = [frames,] codes (a colour per code) /
  masked input (gray) / predicted codes at masked positions / right (green) or
  wrong (red) at masked positions.

  tokens, predicted: int [n, T, h, w]; mask: bool [n, T, h, w]; frames:
  optional uint8 [n, T, H, W, 3]. Token maps are scaled up to the frame size
  (or 8 px a token).
  """
  os.makedirs(directory, exist_ok=True)
  colors = code_colors(vocab_size)
  paths = []
  for i in range(tokens.shape[0]):
    codes = np.where((tokens[i] >= 0) & (tokens[i] < vocab_size), tokens[i], vocab_size)
    m = np.asarray(mask[i], bool)
    original = colors[codes]
    masked = np.where(m[..., None], MASK_GRAY, original)
    guess = np.where(m[..., None], colors[np.clip(predicted[i], 0, vocab_size)], original)
    right = np.where((predicted[i] == tokens[i])[..., None], RIGHT_COLOR, WRONG_COLOR)
    marks = np.where(m[..., None], right, (original // 4).astype(np.uint8))
    up = frames.shape[2] // tokens.shape[2] if frames is not None else 8
    rows = [r.repeat(up, 1).repeat(up, 2) for r in (original, masked, guess, marks)]
    if frames is not None:
      rows.insert(0, np.asarray(frames[i], np.uint8))
    path = os.path.join(directory, f'tokens_step{step:07d}_sample{i}.png')
    Image.fromarray(tile_rows(rows, max(1, 128 // rows[0].shape[1]))).save(path)
    paths.append(path)
  return paths
