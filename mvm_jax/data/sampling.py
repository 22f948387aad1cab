"""From one video record to its training/eval samples (the per-record work).

A sampler decodes a record ONCE and returns ``num_samples = k`` samples
(repeated sampling, MAE-ST ``repeat_aug``), each with its own temporal
positions, crops and flips when training: ``(record, rng) -> uint8
[k, *sample_shape]`` (normalised later, on the device: :mod:`mvm_jax.pixels`). Samplers, by ``config.data.sampling`` (:data:`SAMPLERS`):

============  =========================  ==============================
name          sample_shape               temporal rule (transforms.py)
============  =========================  ==============================
'clip'        [T, S, S, 3]               T frames ``sampling_rate`` apart
'segment'     [T, S, S, 3]               one frame in each of T segments
'clip_pair'   [2, T, S, S, 3]            two clips (VIMPAC)
'frame_pair'  [2, 1, S, S, 3]            two frames (ViC-MAE)
============  =========================  ==============================

Every temporal view (a clip, or one frame of a pair) gets its own random
resized crop and flip in training, then its own RandAugment ops when
``randaugment_ops > 0``; all frames of one view share them.
Evaluation (``train=False``) is deterministic: centred positions and a centre
crop. Multi-view testing ('clip' and 'segment', evaluation only):
``temporal_views = K`` evenly spread clips x ``spatial_views`` (1 or 3)
crops along the long side give ``[K * spatial_views, T, S, S, 3]``; with
``K = spatial_views = 1`` there is no view axis and the sample is the plain
centre-crop eval clip. Views are ordered temporal-major: view
``t * spatial_views + s`` is clip t, crop s.

With ``target_fps > 0`` positions are chosen on the video resampled to that
frame rate (:class:`~mvm_jax.data.transforms.Timeline`) and mapped back to
source frames, so strides, gaps and distances count target-rate frames. The
source frame rate comes from the container (probed only when needed); if it
is unknown the video is sampled at its native rate, and a clip-pair distance
limit is not applied.

A record with ``reverse=True`` has each temporal view reversed in time after
sampling.

A video (its record's range) shorter than a clip's span ('clip', 'clip_pair':
``(num_frames - 1) * sampling_rate + 1`` positions) is sampled as
``short_videos`` says: 'loop' (the clip loops within it), 'pad' (from its
first frame, its last frame repeated) or 'skip' (:meth:`Sampler.sample` raises
:class:`ShortVideoError`; the loader leaves the record out).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mvm_jax.data import decode
from mvm_jax.data import settings, transforms
from mvm_jax.data.sources import VideoRecord


class ShortVideoError(Exception):
  """A video shorter than the clip span, with ``short_videos='skip'``: it gives no sample."""

  def __init__(self, path: str, length: int, span: int):
    super().__init__(f'{path}: {length} frames, shorter than the clip span of {span}')
    self.path, self.length, self.span = path, length, span


def read_frames(
  record: VideoRecord,
  indices: np.ndarray,
  frame_range: tuple[int, int],
  *,
  short_side: int | None,
  cache: decode.VideoCache | None = None,
) -> np.ndarray:
  """uint8 [N, H, W, 3]: frames ``indices`` (int [N]) of the record, in one decode.

  ``cache``: read through this cache of decoded videos (same result).
  """
  if cache is None:
    return decode.decode_frames(record.path, indices, short_side=short_side)
  start, stop = frame_range
  return cache.get_frames(record.path, indices, start=start, stop=stop, short_side=short_side)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampler:
  """Base of all samplers: decode once, k samples, spatial views (uint8).

  Subclasses define the temporal rule (:meth:`_positions`) and the sample
  layout (:attr:`sample_shape`, :attr:`_spatial_views`).

  Attributes:
    crop_size: S, output height = width.
    scale / aspect_ratio: random-resized-crop ranges (training).
    flip: random horizontal flip (training).
    mean / std: per-channel normalization of [0, 1] pixels (kept for the consumers; the
      samples stay uint8 and the jitted steps normalise them).
    num_samples: k samples per record (repeated sampling).
    train: random positions, crops and flips; False: deterministic (the rng
      is ignored).
    decode_short_side: FFmpeg downscales frames whose short side is larger
      than this before cropping (None/0: native resolution).
    target_fps: choose positions at this frame rate (<= 0: native).
    randaugment_ops: RandAugment ops per view after the crop (training;
      0: off), at ``randaugment_magnitude`` (0 .. 10) with Gaussian noise of
      std ``randaugment_magnitude_std`` (:mod:`~mvm_jax.data.randaugment`).
    short_videos: a video shorter than :attr:`clip_span`: 'loop', 'pad' or
      'skip' (see the module doc).
    color_jitter / grayscale_prob: colour distortion of each view (training;
      :func:`~mvm_jax.data.transforms.color_jitter`), drawn per view: the two
      clips of a pair get their own.
  """

  crop_size: int
  scale: tuple[float, float] = (0.5, 1.0)
  aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  mean: tuple[float, float, float] = transforms.IMAGENET_MEAN
  std: tuple[float, float, float] = transforms.IMAGENET_STD
  num_samples: int = 1
  train: bool = True
  decode_short_side: int | None = None
  target_fps: float = 0.0
  randaugment_ops: int = 0
  randaugment_magnitude: float = 9.0
  randaugment_magnitude_std: float = 0.5
  short_videos: str = 'loop'
  color_jitter: float = 0.0
  grayscale_prob: float = 0.0

  # --- subclass interface ---

  @property
  def clip_span(self) -> int:
    """Positions one clip spans (a shorter video loops, pads or is skipped); 0: no such rule."""
    return 0

  @property
  def sample_shape(self) -> tuple[int, ...]:
    """Shape of one sample's video (the loader batches ``[b, *sample_shape]``)."""
    raise NotImplementedError

  @property
  def _spatial_views(self) -> int:
    """Spatial views per temporal view (multi-view testing; else 1)."""
    return 1

  @property
  def _needs_fps(self) -> bool:
    return self.target_fps > 0

  def _positions(self, timeline: transforms.Timeline, rng: np.random.Generator | None) -> np.ndarray:
    """int64 [V, T]: one sample's temporal views on ``[0, timeline.length)``."""
    raise NotImplementedError

  # --- shared ---

  @property
  def _index_shape(self) -> tuple[int, ...]:
    """Per-sample shape of :meth:`frame_indices` ([V, T] or [T])."""
    views = self.sample_shape[:-3]
    if self._spatial_views > 1:
      return (views[0] // self._spatial_views, *views[1:])
    return views

  @staticmethod
  def frame_range(record: VideoRecord) -> tuple[int, int]:
    """(start, stop): the record's usable frames (probes the file if needed)."""
    stop = record.frame_stop
    if stop is None:
      stop = decode.probe_video(record.path).num_frames
    return record.frame_start, stop

  def timeline(self, record: VideoRecord, frame_range: tuple[int, int] | None = None) -> transforms.Timeline:
    """The positions samples are drawn from (probes the file at most once).

    Raises:
      decode.VideoDecodeError: the file cannot be probed, or has no frames in
        the record's range.
    """
    info = None
    if self._needs_fps or (frame_range is None and record.frame_stop is None):
      info = decode.probe_video(record.path)
    if frame_range is None:
      stop = record.frame_stop if record.frame_stop is not None else info.num_frames
      frame_range = (record.frame_start, stop)
    if frame_range[1] <= frame_range[0]:
      raise decode.VideoDecodeError(
        record.path, f'no frames in the range [{frame_range[0]}, {frame_range[1]})'
      )
    fps = info.fps if info is not None else 0.0
    return transforms.Timeline.resampled(*frame_range, source_fps=fps, target_fps=self.target_fps)

  def frame_indices(
    self,
    record: VideoRecord,
    rng: np.random.Generator | None,
    frame_range: tuple[int, int] | None = None,
  ) -> np.ndarray:
    """int64 [k, *index_shape] source frame indices of the k samples (decodes nothing).

    ``index_shape`` is ``sample_shape`` without ``[S, S, 3]`` (one row per
    temporal view; multi-view: [K, T]). ``frame_range``:
    ``self.frame_range(record)`` when already known.
    """
    return self.timeline_indices(self.timeline(record, frame_range), rng)

  def timeline_indices(self, timeline: transforms.Timeline, rng: np.random.Generator | None) -> np.ndarray:
    """int64 [k, *index_shape]: :meth:`frame_indices` for a known timeline (pure)."""
    rng = rng if self.train else None
    positions = np.stack([self._positions(timeline, rng) for _ in range(self.num_samples)])
    return timeline.frames(positions).reshape(self.num_samples, *self._index_shape)

  def __call__(
    self,
    record: VideoRecord,
    rng: np.random.Generator | None = None,
    *,
    cache: decode.VideoCache | None = None,
  ) -> np.ndarray:
    """Samples the record: uint8 [k, *sample_shape] (see :meth:`sample`)."""
    return self.sample(record, rng, cache=cache)[0]

  def sample(
    self,
    record: VideoRecord,
    rng: np.random.Generator | None = None,
    *,
    cache: decode.VideoCache | None = None,
  ) -> tuple[np.ndarray, int | None]:
    """Samples the record; also says whether it is shorter than :attr:`clip_span`.

    Args:
      record: the video.
      rng: randomness of the samples (training; ignored when not training).
      cache: read the frames through this cache of decoded videos, which
        decodes the record's whole frame range once; same result as without.

    Returns:
      (uint8 [k, *sample_shape] (normalised on the device: :mod:`mvm_jax.pixels`), the video's length in positions if it is shorter
      than the clip span, else None).

    Raises:
      decode.VideoDecodeError: the file cannot be decoded.
      ShortVideoError: a short video and ``short_videos='skip'``.
    """
    if self.train and rng is None:
      raise ValueError(f'{type(self).__name__}(train=True) needs an rng')
    timeline = self.timeline(record)
    short = timeline.length if timeline.length < self.clip_span else None
    if short is not None and self.short_videos == 'skip':
      raise ShortVideoError(str(record.path), short, self.clip_span)
    indices = self.timeline_indices(timeline, rng)
    k, t = indices.shape[0], indices.shape[-1]
    frame_range = (timeline.start, timeline.stop)
    frames = read_frames(
      record, indices.reshape(-1), frame_range, short_side=self.decode_short_side, cache=cache
    )
    clips = frames.reshape(k, -1, t, *frames.shape[1:])  # [k, V, T, H, W, 3]
    s = self.crop_size
    out = np.empty((k, *self.sample_shape), np.uint8)
    views = out.reshape(k, -1, t, s, s, 3)  # a view of out: [k, V * spatial, T, S, S, 3]
    for i in range(k):
      for v, clip in enumerate(clips[i]):
        if record.reverse:
          clip = transforms.reverse_time(clip)
        n = self._spatial_views
        views[i, v * n : (v + 1) * n] = self._crops(clip, rng)
    return out, short

  def _crops(self, clip: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [spatial_views, T, S, S, 3]."""
    if self.train:
      view = transforms.train_view(
        clip,
        rng,
        crop_size=self.crop_size,
        scale=self.scale,
        aspect_ratio=self.aspect_ratio,
        flip=self.flip,
        randaugment_ops=self.randaugment_ops,
        randaugment_magnitude=self.randaugment_magnitude,
        randaugment_magnitude_std=self.randaugment_magnitude_std,
        color_jitter_strength=self.color_jitter,
        grayscale_prob=self.grayscale_prob,
      )
      return view[None]
    return transforms.eval_views(clip, crop_size=self.crop_size, num_crops=self._spatial_views)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _SingleClipSampler(Sampler):
  """A sample is one clip; evaluation may take several views of it.

  Attributes:
    temporal_views: K evenly spread clips (evaluation only).
    spatial_views: 1 (centre) or 3 crops along the long side (evaluation only).
  """

  temporal_views: int = 1
  spatial_views: int = 1

  def __post_init__(self):
    if self.temporal_views < 1 or self.spatial_views not in (1, 3):
      raise ValueError(
        'need temporal_views >= 1 and spatial_views in (1, 3), got '
        f'{self.temporal_views}, {self.spatial_views}'
      )
    if self.train and self.temporal_views * self.spatial_views > 1:
      raise ValueError('multi-view testing (temporal_views / spatial_views > 1) is for evaluation only')

  @property
  def num_views(self) -> int:
    """Views per sample: temporal_views * spatial_views."""
    return self.temporal_views * self.spatial_views

  @property
  def sample_shape(self) -> tuple[int, ...]:
    clip = (self.num_frames, self.crop_size, self.crop_size, 3)
    return (self.num_views, *clip) if self.num_views > 1 else clip

  @property
  def _spatial_views(self) -> int:
    return self.spatial_views

  def _positions(self, timeline, rng):
    if rng is not None:
      return self._clip(timeline.length, rng, 0, 1)[None]
    return np.stack(
      [self._clip(timeline.length, None, v, self.temporal_views) for v in range(self.temporal_views)]
    )

  def _clip(self, length: int, rng, view: int, num_views: int) -> np.ndarray:
    """int64 [T] positions in ``[0, length)``: random, or eval view ``view`` of ``num_views``."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class ClipSampler(_SingleClipSampler):
  """``num_frames`` frames ``sampling_rate`` apart (MAE-ST), random start.

  Sample ``[T, S, S, 3]`` (multi-view eval: ``[K * spatial_views, T, S, S, 3]``).
  ``frame_indices`` gives ``[k, T]`` (multi-view: ``[1, K, T]``).
  """

  num_frames: int
  sampling_rate: int

  @property
  def clip_span(self) -> int:
    return (self.num_frames - 1) * self.sampling_rate + 1

  def _clip(self, length, rng, view, num_views):
    n, rate, short = self.num_frames, self.sampling_rate, self.short_videos
    return transforms.temporal_indices(0, length, n, rate, rng, view=view, num_views=num_views, short=short)


@dataclasses.dataclass(frozen=True)
class SegmentSampler(_SingleClipSampler):
  """SSv2 style: ``num_frames`` equal segments, one frame each (random / centre).

  Sample ``[T, S, S, 3]`` (multi-view eval: view v of K takes the frame at
  offset ``(2v + 1) / 2K`` of every segment).
  """

  num_frames: int

  def _clip(self, length, rng, view, num_views):
    return transforms.segment_indices(0, length, self.num_frames, rng, view=view, num_views=num_views)


@dataclasses.dataclass(frozen=True)
class ClipPairSampler(Sampler):
  """Two clips of one video (VIMPAC), each its own crop and flip.

  Sample ``[2, T, S, S, 3]``; ``frame_indices`` gives ``[k, 2, T]``.

  Attributes:
    num_frames / sampling_rate: each clip, as in :class:`ClipSampler`.
    max_distance_s: most seconds between the two clips' first frames
      (<= 0: unlimited, both starts independent and uniform over the video).
    min_distance_s: fewest seconds between them (0: none); at least the clip span apart,
      the two clips share no frame. A video too short for it gives its farthest pair.
  """

  num_frames: int
  sampling_rate: int
  max_distance_s: float = 0.0
  min_distance_s: float = 0.0

  @property
  def sample_shape(self) -> tuple[int, ...]:
    return (2, self.num_frames, self.crop_size, self.crop_size, 3)

  @property
  def clip_span(self) -> int:
    return (self.num_frames - 1) * self.sampling_rate + 1

  @property
  def _needs_fps(self) -> bool:
    return self.target_fps > 0 or self.max_distance_s > 0 or self.min_distance_s > 0

  def _positions(self, timeline, rng):
    max_distance, min_distance = transforms.pair_distance_limits(
      timeline, self.max_distance_s, self.min_distance_s
    )
    return transforms.clip_pair_indices(
      0,
      timeline.length,
      self.num_frames,
      self.sampling_rate,
      rng,
      max_distance=max_distance,
      min_distance=min_distance,
      short=self.short_videos,
    )


FRAME_PAIR_MODES = settings.FRAME_PAIR_MODES  # ('distant', 'continuous')


@dataclasses.dataclass(frozen=True)
class FramePairSampler(Sampler):
  """Two frames of one video (ViC-MAE), each its own crop and flip.

  Sample ``[2, 1, S, S, 3]``; ``frame_indices`` gives ``[k, 2, 1]``.

  Attributes:
    mode: 'distant': one frame from each of two different of
      ``num_segments`` equal segments; 'continuous': two frames ``gap``
      frames apart.
    num_segments: n ('distant').
    gap: delta, in frames ('continuous').
  """

  mode: str = 'distant'
  num_segments: int = 2
  gap: int = 8

  def __post_init__(self):
    if self.mode not in FRAME_PAIR_MODES:
      raise ValueError(f'unknown frame pair mode {self.mode!r}; known: {list(FRAME_PAIR_MODES)}')

  @property
  def num_frames(self) -> int:
    return 1

  @property
  def sample_shape(self) -> tuple[int, ...]:
    return (2, 1, self.crop_size, self.crop_size, 3)

  def _positions(self, timeline, rng):
    if self.mode == 'distant':
      pair = transforms.distant_frame_pair(0, timeline.length, self.num_segments, rng)
    else:
      pair = transforms.continuous_frame_pair(0, timeline.length, self.gap, rng)
    return pair[:, None]


SAMPLERS = {
  'clip': ClipSampler,
  'segment': SegmentSampler,
  'clip_pair': ClipPairSampler,
  'frame_pair': FramePairSampler,
}
assert tuple(SAMPLERS) == settings.SAMPLER_NAMES
