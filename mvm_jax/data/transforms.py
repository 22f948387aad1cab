"""Per-clip index rules and augmentations in NumPy (run in the data workers).

Shapes: a clip is ``uint8 [T, H, W, 3]`` until :func:`normalize` turns it
into ``float32 [T, H, W, 3]``. Spatial ops use one crop box / one flip
decision for every frame of a clip, so motion stays coherent.

Temporal rules pick frame indices inside an allowed range ``[start, stop)``
of length ``L`` and never leave it (frames outside it may be another
split's). Training draws from ``rng``; evaluation (``rng=None``) is
deterministic, optionally as view ``view`` of ``num_views`` evenly spread
views (multi-view testing).

- :func:`temporal_indices` (clip): ``num_frames`` frames ``sampling_rate``
  apart, spanning ``(num_frames - 1) * sampling_rate + 1`` frames. Training
  picks the first frame uniformly among the positions where the clip fits;
  evaluation takes the centred clip, or with ``num_views = K > 1`` the K
  clips whose starts are evenly spaced from the first to the last fitting
  position. If ``L`` is shorter than the span, the clip *loops* inside the
  range (index ``start + (offset + i * rate) mod L``, with ``offset``
  uniform in ``[0, L)`` when training and ``L * view // num_views`` when
  evaluating), or with ``short='pad'`` starts at the range's first frame
  and repeats its last one (``start + min(i * rate, L - 1)``; see
  ``config.data.short_videos``).
- :func:`segment_indices` (SSv2 style): the range is cut into ``n`` equal
  integer segments ``[start + j * L // n, start + (j + 1) * L // n)``; one
  frame per segment, uniform in training, the segment centre in evaluation
  (view ``v`` of ``K``: offset ``(2v + 1) / 2K`` of the segment). If
  ``L < n`` some segments are empty and take the frame at their boundary,
  so frames repeat (indices stay non-decreasing).
- :func:`clip_pair_indices` (VIMPAC): two clips, each following the clip
  rule, their first frames uniform over all pairs at most ``max_distance``
  apart (independent and uniform when unlimited). Evaluation: the two
  clips as far apart as allowed, centred. The clips may overlap or
  coincide; in a short range both loop.
- :func:`distant_frame_pair` (ViC-MAE default): ``n`` segments as above,
  one uniform frame from each of two different segments (earlier one
  first); evaluation: centres of the first and last segments. If ``L < n``
  the two frames may coincide.
- :func:`continuous_frame_pair`: two frames exactly ``gap`` apart, the
  first uniform where the pair fits (evaluation: centred). If ``L <= gap``
  the gap shrinks to ``L - 1`` (first and last frame of the range).

:class:`Timeline` resamples a range to a target frame rate: the rules run
on the resampled positions, which then map back to source frame indices,
so a stride or gap counts frames at the target rate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from PIL import Image

from mvm_jax.data import randaugment, settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- temporal rules ---------------------------------------------------------

# Float slack when mapping between frame rates (e.g. 29.97 -> 15 fps).
_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Timeline:
  """Positions ``0 .. length - 1`` on a range of source frames, at some frame rate.

  Attributes:
    start / stop: the source frame range ``[start, stop)``.
    step: source frames per position (source fps / target fps; 1: native).
    fps: positions per second (0: unknown).
  """

  start: int
  stop: int
  step: float = 1.0
  fps: float = 0.0

  @classmethod
  def resampled(cls, start: int, stop: int, source_fps: float = 0.0, target_fps: float = 0.0) -> Timeline:
    """The range at ``target_fps`` (<= 0, or an unknown ``source_fps`` <= 0: native)."""
    if stop <= start:
      raise ValueError(f'empty frame range [{start}, {stop})')
    if target_fps > 0 and source_fps > 0:
      return cls(start, stop, source_fps / target_fps, float(target_fps))
    return cls(start, stop, 1.0, max(float(source_fps), 0.0))

  @property
  def length(self) -> int:
    """Number of positions: ``ceil(L / step)``, those whose time lies in the range."""
    n = self.stop - self.start
    if self.step == 1.0:
      return n
    return max(1, math.ceil(n / self.step - _EPS))

  def frames(self, positions) -> np.ndarray:
    """Source frame indices of ``positions``: the nearest source frame in time.

    ``start + round(p * step)`` (halves up), at most ``stop - 1``;
    upsampling (step < 1) repeats source frames.
    """
    positions = np.asarray(positions, np.int64)
    if self.step == 1.0:
      return self.start + positions
    offsets = np.floor(positions * self.step + 0.5 + _EPS).astype(np.int64)
    return self.start + np.minimum(offsets, self.stop - self.start - 1)

  def positions_in(self, seconds: float) -> int | None:
    """Whole positions within ``seconds`` (None: unknown frame rate)."""
    if self.fps <= 0:
      return None
    return int(math.floor(seconds * self.fps + _EPS))


def _check_range(frame_start: int, frame_stop: int) -> int:
  length = frame_stop - frame_start
  if length <= 0:
    raise ValueError(f'empty frame range [{frame_start}, {frame_stop})')
  return length


def _clip_span(num_frames: int, sampling_rate: int) -> int:
  return (num_frames - 1) * sampling_rate + 1


def _num_offsets(length: int, span: int) -> tuple[int, bool]:
  """(number of possible first frames, whether the clip fits without looping)."""
  if span <= length:
    return length - span + 1, True
  return length, False


# What a clip does in a range shorter than its span (config.data.short_videos); 'skip' is the
# sampler's (the record gives no sample), the index rules loop for it.
SHORT_VIDEOS = settings.SHORT_VIDEOS  # ('loop', 'pad', 'skip')


def _clip_at(
  frame_start: int, length: int, offset: int, num_frames: int, sampling_rate: int, pad: bool = False
) -> np.ndarray:
  """int64 [num_frames]: the clip starting ``offset`` frames into the range (loops; ``pad``:
  repeats the range's last frame instead)."""
  steps = offset + sampling_rate * np.arange(num_frames, dtype=np.int64)
  if pad:
    return frame_start + np.minimum(steps, length - 1)
  return frame_start + steps % length


def temporal_indices(
  frame_start: int,
  frame_stop: int,
  num_frames: int,
  sampling_rate: int,
  rng: np.random.Generator | None = None,
  *,
  view: int = 0,
  num_views: int = 1,
  short: str = 'loop',
) -> np.ndarray:
  """Frame indices of one clip inside ``[frame_start, frame_stop)``.

  Args:
    rng: random start when given (training); else deterministic (eval).
    view / num_views: (eval) clip ``view`` of ``num_views`` evenly spread
      clips; ``num_views=1``: the centred clip.
    short: a range shorter than the span: 'loop' (default) or 'pad' (see module doc).

  Returns:
    int64 [num_frames], increasing unless the clip loops (see module doc).
  """
  length = _check_range(frame_start, frame_stop)
  span = _clip_span(num_frames, sampling_rate)
  count, fits = _num_offsets(length, span)
  if not fits and short == 'pad':
    return _clip_at(frame_start, length, 0, num_frames, sampling_rate, pad=True)
  if rng is not None:
    offset = rng.integers(0, count)
  elif fits:
    offset = (count - 1) // 2 if num_views == 1 else (count - 1) * view // (num_views - 1)
  else:
    offset = length * view // num_views
  return _clip_at(frame_start, length, offset, num_frames, sampling_rate)


def segment_bounds(frame_start: int, frame_stop: int, num_segments: int) -> np.ndarray:
  """int64 [num_segments + 1]: segment j is ``[bounds[j], bounds[j + 1])``."""
  length = _check_range(frame_start, frame_stop)
  return frame_start + (np.arange(num_segments + 1, dtype=np.int64) * length) // num_segments


def segment_indices(
  frame_start: int,
  frame_stop: int,
  num_segments: int,
  rng: np.random.Generator | None = None,
  *,
  view: int = 0,
  num_views: int = 1,
) -> np.ndarray:
  """One frame from each of ``num_segments`` equal segments (see module doc).

  Args:
    rng: uniform frame per segment when given (training); else the frame at
      offset ``(2 * view + 1) / (2 * num_views)`` of each segment (centre for
      one view).

  Returns:
    int64 [num_segments], non-decreasing.
  """
  bounds = segment_bounds(frame_start, frame_stop, num_segments)
  sizes = bounds[1:] - bounds[:-1]
  if rng is not None:
    offsets = np.floor(rng.random(num_segments) * sizes).astype(np.int64)
  else:
    offsets = ((2 * view + 1) * sizes) // (2 * num_views)
  return bounds[:-1] + offsets


def _offset_pair(
  count: int, max_distance: int | None, rng: np.random.Generator | None, min_distance: int = 0
) -> tuple[int, int]:
  """Two offsets in ``[0, count)`` between ``min_distance`` and ``max_distance`` apart
  (None: any; a ``min_distance`` over ``count - 1`` becomes ``count - 1``, the farthest pair).

  Training: uniform over all allowed (ordered) pairs. Eval: as far apart as
  allowed, centred.
  """
  limit = count - 1 if max_distance is None else min(max(max_distance, 0), count - 1)
  least = min(max(min_distance, 0), limit)
  if rng is None:
    first = (count - 1 - limit) // 2
    return first, first + limit
  if limit == count - 1 and least == 0:
    return int(rng.integers(0, count)), int(rng.integers(0, count))
  firsts = np.arange(count)
  # Allowed seconds of each first f: [f - limit, f - least] and [f + least, f + limit] in range
  # (f itself is in both when least == 0).
  above = np.maximum(np.minimum(firsts + limit, count - 1) - (firsts + least) + 1, 0)
  below = np.maximum((firsts - least) - np.maximum(firsts - limit, 0) + 1, 0)
  weights = above + below - int(least == 0)
  first = int(rng.choice(count, p=weights / weights.sum()))
  seconds = np.arange(max(first - limit, 0), min(first + limit, count - 1) + 1)
  seconds = seconds[np.abs(seconds - first) >= least]
  return first, int(rng.choice(seconds))


def pair_distance_limits(
  timeline: Timeline, max_distance_s: float, min_distance_s: float
) -> tuple[int | None, int]:
  """(most, fewest) positions between a clip pair's starts, from seconds: a limit <= 0, or a
  timeline of unknown frame rate, gives none (most None: unlimited; fewest 0)."""
  most = timeline.positions_in(max_distance_s) if max_distance_s > 0 else None
  fewest = (timeline.positions_in(min_distance_s) or 0) if min_distance_s > 0 else 0
  return most, fewest


def clip_pair_indices(
  frame_start: int,
  frame_stop: int,
  num_frames: int,
  sampling_rate: int,
  rng: np.random.Generator | None = None,
  *,
  max_distance: int | None = None,
  min_distance: int = 0,
  short: str = 'loop',
) -> np.ndarray:
  """Two clips of one range (VIMPAC), first frames ``min_distance``..``max_distance`` apart.

  Args:
    max_distance: most frames between the two clips' first frames; None:
      unlimited (independent uniform starts).
    min_distance: fewest frames between them (the clip span: clips that share no frame);
      a range too short for it gives its farthest pair.
    rng: random pair when given (training); else deterministic (eval).
    short: a range shorter than a clip's span: 'loop' (default) or 'pad' (both clips
      from the first frame, the last one repeated).

  Returns:
    int64 [2, num_frames].
  """
  length = _check_range(frame_start, frame_stop)
  count, fits = _num_offsets(length, _clip_span(num_frames, sampling_rate))
  if not fits and short == 'pad':
    clip = _clip_at(frame_start, length, 0, num_frames, sampling_rate, pad=True)
    return np.stack([clip, clip])
  offsets = _offset_pair(count, max_distance, rng, min_distance)
  return np.stack([_clip_at(frame_start, length, o, num_frames, sampling_rate) for o in offsets])


def distant_frame_pair(
  frame_start: int, frame_stop: int, num_segments: int = 2, rng: np.random.Generator | None = None
) -> np.ndarray:
  """One frame from each of two different segments (ViC-MAE distant sampling).

  Returns:
    int64 [2], earlier segment first.
  """
  if num_segments < 2:
    raise ValueError(f'distant frame pairs need >= 2 segments, got {num_segments}')
  if rng is None:
    frames = segment_indices(frame_start, frame_stop, num_segments)
    return frames[[0, num_segments - 1]]
  chosen = np.sort(rng.choice(num_segments, 2, replace=False))
  return segment_indices(frame_start, frame_stop, num_segments, rng)[chosen]


def continuous_frame_pair(
  frame_start: int, frame_stop: int, gap: int, rng: np.random.Generator | None = None
) -> np.ndarray:
  """Two frames ``gap`` apart (ViC-MAE continuous sampling; see module doc).

  Returns:
    int64 [2]: ``[i, i + min(gap, L - 1)]``.
  """
  length = _check_range(frame_start, frame_stop)
  gap = min(max(gap, 0), length - 1)
  first = rng.integers(0, length - gap) if rng is not None else (length - 1 - gap) // 2
  return frame_start + np.array([first, first + gap], np.int64)


# --- spatial -----------------------------------------------------------------


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


def center_crop_box(height: int, width: int, fraction: float = 1.0) -> tuple[int, int, int, int]:
  """The central square of side ``fraction`` × min(H, W): (top, left, side, side).

  Resizing it to S equals "resize the short side to S / fraction, centre crop
  S x S" (``fraction`` 1: the usual eval view; 128/160: VIMPAC's extraction).
  """
  side = max(1, int(round(min(height, width) * fraction)))
  return (height - side) // 2, (width - side) // 2, side, side


def spatial_crop_boxes(height: int, width: int, num_crops: int) -> list[tuple[int, int, int, int]]:
  """``num_crops`` squares of side min(H, W) evenly spread along the long side.

  Resized to S, this is multi-view testing's "resize short side to S, take
  S x S crops": for 3 crops left / centre / right (landscape) or top /
  centre / bottom (portrait); one crop is :func:`center_crop_box`.

  Returns:
    [(top, left, side, side)] in order along the long side.
  """
  side = min(height, width)
  room = max(height, width) - side
  if num_crops == 1:
    offsets = [room // 2]
  else:
    offsets = [room * i // (num_crops - 1) for i in range(num_crops)]
  if height > width:
    return [(o, 0, side, side) for o in offsets]
  return [(0, o, side, side) for o in offsets]


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
  randaugment_ops: int = 0,
  randaugment_magnitude: float = 9.0,
  randaugment_magnitude_std: float = 0.5,
  color_jitter_strength: float = 0.0,
  grayscale_prob: float = 0.0,
) -> np.ndarray:
  """Random resized crop + random horizontal flip (p=0.5 when ``flip``) + RandAugment
  + colour jitter.

  RandAugment (:func:`~mvm_jax.data.randaugment.rand_augment`, each op with
  p=0.5) runs on the cropped frames when ``randaugment_ops > 0``, drawing its
  ops once for the clip from ``rng`` after the crop and flip draws (0: no
  draws, the same crops and flips as without it). :func:`color_jitter` comes
  last, with its draws after all of those.

  uint8 [T, H, W, 3] -> uint8 [T, crop_size, crop_size, 3].
  """
  box = random_resized_crop_box(frames.shape[1], frames.shape[2], rng, scale, aspect_ratio)
  out = crop_and_resize(frames, box, crop_size)
  if flip and rng.random() < 0.5:
    out = hflip(out)
  if randaugment_ops > 0:
    out = randaugment.rand_augment(
      out,
      rng,
      num_ops=randaugment_ops,
      magnitude=randaugment_magnitude,
      magnitude_std=randaugment_magnitude_std,
    )
  if color_jitter_strength > 0 or grayscale_prob > 0:
    out = color_jitter(out, rng, color_jitter_strength, grayscale_prob)
  return out


# Luma weights (ITU-R BT.601) and the RGB <-> YIQ matrices: a hue shift is a rotation of (I, Q).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


def color_jitter(
  frames: np.ndarray, rng: np.random.Generator, strength: float, grayscale_prob: float
) -> np.ndarray:
  """SimCLR-style colour distortion of one view, the same for all its frames.

  Brightness, contrast and saturation factors uniform in [1 - 0.8 s, 1 + 0.8 s] and a
  hue rotation uniform in ±0.2 s of a turn (in YIQ space), for strength s, applied in
  that order; then, with probability ``grayscale_prob``, the luma on all three
  channels. ``strength`` 0 draws no jitter numbers, ``grayscale_prob`` 0 no grayscale
  number (so turning either on leaves the other draws of ``rng`` unchanged).
  ViC-MAE's colour augmentations are this kind (its Table 6 ablation).

  uint8 [T, H, W, 3] -> uint8 [T, H, W, 3].
  """
  x = frames.astype(np.float32) / 255.0
  if strength > 0:
    low, high = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    brightness, contrast, saturation = rng.uniform(low, high, size=3)
    hue = rng.uniform(-0.2 * strength, 0.2 * strength)
    x = x * brightness
    x = (x - float(np.mean(x @ LUMA))) * contrast + float(np.mean(x @ LUMA))
    gray = (x @ LUMA)[..., None]
    x = gray + (x - gray) * saturation
    angle = 2 * np.pi * hue
    rotation = np.array(
      [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]], np.float32
    )
    x = x @ (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).T
  if grayscale_prob > 0 and rng.random() < grayscale_prob:
    x = np.repeat((x @ LUMA)[..., None], 3, axis=-1)
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def eval_view(frames: np.ndarray, *, crop_size: int, resize_short_side: int = 0) -> np.ndarray:
  """Deterministic centre crop: resize the short side to ``resize_short_side``
  (0, or anything <= S: to S, so the crop spans the short side), take the centre
  S x S. uint8 [T, H, W, 3] -> uint8 [T, S, S, 3]."""
  fraction = crop_size / resize_short_side if resize_short_side > crop_size else 1.0
  box = center_crop_box(frames.shape[1], frames.shape[2], fraction)
  return crop_and_resize(frames, box, crop_size)


def eval_views(frames: np.ndarray, *, crop_size: int, num_crops: int) -> np.ndarray:
  """Multi-view spatial crops (:func:`spatial_crop_boxes`).

  uint8 [T, H, W, 3] -> uint8 [num_crops, T, S, S, 3].
  """
  boxes = spatial_crop_boxes(frames.shape[1], frames.shape[2], num_crops)
  return np.stack([crop_and_resize(frames, box, crop_size) for box in boxes])
