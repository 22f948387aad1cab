"""Per-clip augmentations in NumPy (run in the data workers, not on device).

Shapes: a clip is ``uint8 [T, H, W, 3]`` until :func:`normalize` turns it
into ``float32 [T, H, W, 3]``. Spatial ops use one crop box / one flip
decision for every frame of a clip, so motion stays coherent.

Temporal sampling policy (:func:`temporal_indices`): a clip is ``num_frames``
frames ``sampling_rate`` apart, spanning ``(num_frames - 1) * sampling_rate + 1``
frames of the allowed range ``[start, stop)``. Training picks the first frame
uniformly among the positions where the clip fits; evaluation takes the
centred clip. If the range is shorter than the span, the clip *loops* inside
the range (index ``start + (offset + i * rate) mod (stop - start)``, with
``offset`` uniform in the range when training and 0 when evaluating), so
frames outside the range (e.g. another split's) are never used.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def temporal_indices(
  frame_start: int,
  frame_stop: int,
  num_frames: int,
  sampling_rate: int,
  rng: np.random.Generator | None = None,
) -> np.ndarray:
  """Frame indices of one clip inside ``[frame_start, frame_stop)``.

  Args:
    rng: random start when given (training); centred clip when None (eval).

  Returns:
    int64 [num_frames], increasing unless the clip loops (see module doc).
  """
  length = frame_stop - frame_start
  if length <= 0:
    raise ValueError(f'empty frame range [{frame_start}, {frame_stop})')
  steps = sampling_rate * np.arange(num_frames, dtype=np.int64)
  span = (num_frames - 1) * sampling_rate + 1
  if span <= length:
    offset = rng.integers(0, length - span + 1) if rng is not None else (length - span) // 2
    return frame_start + offset + steps
  offset = rng.integers(0, length) if rng is not None else 0
  return frame_start + (offset + steps) % length


def random_resized_crop_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  scale: Sequence[float] = (0.5, 1.0),
  aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
  max_attempts: int = 10,
) -> tuple[int, int, int, int]:
  """A random crop (torchvision RandomResizedCrop rule).

  Area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in
  ``aspect_ratio``; after ``max_attempts`` misses, the largest central crop
  with the aspect ratio clamped into range.

  Returns:
    (top, left, crop_height, crop_width).
  """
  area = height * width
  log_lo, log_hi = math.log(aspect_ratio[0]), math.log(aspect_ratio[1])
  for _ in range(max_attempts):
    target_area = area * rng.uniform(scale[0], scale[1])
    ratio = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target_area * ratio)))
    h = int(round(math.sqrt(target_area / ratio)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < aspect_ratio[0]:
    w, h = width, int(round(width / aspect_ratio[0]))
  elif in_ratio > aspect_ratio[1]:
    h, w = height, int(round(height * aspect_ratio[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
  """The largest central square: (top, left, side, side).

  Resizing it to S equals the usual eval "resize short side to S, centre crop
  S x S".
  """
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side


def crop_and_resize(frames: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Crops ``box`` from every frame and resizes it to ``size x size``.

  Bilinear with PIL (antialiased when shrinking), one C call per frame.

  Args:
    frames: uint8 [T, H, W, 3].
    box: (top, left, height, width).

  Returns:
    uint8 [T, size, size, 3].
  """
  top, left, h, w = box
  out = np.empty((frames.shape[0], size, size, 3), np.uint8)
  pil_box = (left, top, left + w, top + h)
  for t, frame in enumerate(frames):
    img = Image.fromarray(frame)
    out[t] = np.asarray(img.resize((size, size), Image.BILINEAR, box=pil_box))
  return out


def hflip(frames: np.ndarray) -> np.ndarray:
  """[T, H, W, C] -> the same, mirrored left-right (a view)."""
  return frames[:, :, ::-1]


def reverse_time(frames: np.ndarray) -> np.ndarray:
  """[T, ...] -> frames in reverse order (a view)."""
  return frames[::-1]


def normalize(
  frames: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
  """uint8 [..., 3] -> float32 [..., 3]: ``(x / 255 - mean) / std``."""
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)
  scale = (1.0 / (255.0 * std)).astype(np.float32)
  return frames.astype(np.float32) * scale - (mean / std).astype(np.float32)


def train_view(
  frames: np.ndarray,
  rng: np.random.Generator,
  *,
  crop_size: int,
  scale: Sequence[float],
  aspect_ratio: Sequence[float],
  flip: bool,
) -> np.ndarray:
  """Random resized crop + random horizontal flip (p=0.5 when ``flip``).

  uint8 [T, H, W, 3] -> uint8 [T, crop_size, crop_size, 3].
  """
  box = random_resized_crop_box(frames.shape[1], frames.shape[2], rng, scale, aspect_ratio)
  out = crop_and_resize(frames, box, crop_size)
  if flip and rng.random() < 0.5:
    out = hflip(out)
  return out


def eval_view(frames: np.ndarray, *, crop_size: int) -> np.ndarray:
  """Deterministic centre crop. uint8 [T, H, W, 3] -> uint8 [T, S, S, 3]."""
  box = center_crop_box(frames.shape[1], frames.shape[2])
  return crop_and_resize(frames, box, crop_size)
