"""From one video record to its training/eval samples (the per-record work).

:class:`ClipSampler` decodes a video once and returns ``num_samples`` clips
(repeated sampling, MAE-ST ``repeat_aug``), each with its own temporal start,
crop and flip when training. Later samplers (clip pairs, frame pairs for
ViC-MAE, multi-view testing) follow the same shape: ``(record, rng) ->
float32 [k, ...]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mvm_jax.data import decode
from mvm_jax.data import transforms
from mvm_jax.data.sources import VideoRecord


@dataclasses.dataclass(frozen=True)
class ClipSampler:
  """Samples ``num_samples`` normalized clips from one record.

  Attributes:
    num_frames: T, frames per clip.
    sampling_rate: stride between the clip's frames (in source frames).
    crop_size: S, output height = width.
    scale / aspect_ratio: random-resized-crop ranges (training).
    flip: random horizontal flip (training).
    mean / std: per-channel normalization of [0, 1] pixels.
    num_samples: k clips per record (repeated sampling).
    train: random temporal start, crop and flip; False: centred clip and
      centre crop, fully deterministic (the rng is ignored).
    decode_short_side: FFmpeg downscales frames whose short side is larger
      than this before cropping (None/0: native resolution).
  """

  num_frames: int
  sampling_rate: int
  crop_size: int
  scale: tuple[float, float] = (0.5, 1.0)
  aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True
  mean: tuple[float, float, float] = transforms.IMAGENET_MEAN
  std: tuple[float, float, float] = transforms.IMAGENET_STD
  num_samples: int = 1
  train: bool = True
  decode_short_side: int | None = None

  @staticmethod
  def frame_range(record: VideoRecord) -> tuple[int, int]:
    """(start, stop): the record's usable frames (probes the file if needed)."""
    stop = record.frame_stop
    if stop is None:
      stop = decode.probe_video(record.path).num_frames
    return record.frame_start, stop

  def frame_indices(
    self, record: VideoRecord, rng: np.random.Generator | None, frame_range: tuple[int, int] | None = None
  ) -> np.ndarray:
    """int64 [k, T] frame indices of the k clips (decodes nothing).

    ``frame_range``: ``self.frame_range(record)`` when already known.
    """
    start, stop = frame_range or self.frame_range(record)
    rng = rng if self.train else None
    return np.stack(
      [
        transforms.temporal_indices(start, stop, self.num_frames, self.sampling_rate, rng)
        for _ in range(self.num_samples)
      ]
    )

  def __call__(
    self,
    record: VideoRecord,
    rng: np.random.Generator | None = None,
    *,
    cache: decode.VideoCache | None = None,
  ) -> np.ndarray:
    """Samples the record's clips.

    Args:
      record: the video.
      rng: randomness of the clips (training; ignored when not training).
      cache: read the frames through this cache of decoded videos, which
        decodes the record's whole frame range once; same result as without.

    Returns:
      float32 [k, T, S, S, 3].

    Raises:
      decode.VideoDecodeError: the file cannot be decoded.
    """
    if self.train and rng is None:
      raise ValueError('ClipSampler(train=True) needs an rng')
    frame_range = self.frame_range(record)
    indices = self.frame_indices(record, rng, frame_range)
    k, t = indices.shape
    if cache is None:
      frames = decode.decode_frames(record.path, indices.reshape(-1), short_side=self.decode_short_side)
    else:
      frames = cache.get_frames(
        record.path,
        indices.reshape(-1),
        start=frame_range[0],
        stop=frame_range[1],
        short_side=self.decode_short_side,
      )
    frames = frames.reshape(k, t, *frames.shape[1:])
    out = np.empty((k, t, self.crop_size, self.crop_size, 3), np.float32)
    for i in range(k):
      clip = frames[i]
      if record.reverse:
        clip = transforms.reverse_time(clip)
      if self.train:
        clip = transforms.train_view(
          clip,
          rng,
          crop_size=self.crop_size,
          scale=self.scale,
          aspect_ratio=self.aspect_ratio,
          flip=self.flip,
        )
      else:
        clip = transforms.eval_view(clip, crop_size=self.crop_size)
      out[i] = transforms.normalize(clip, self.mean, self.std)
    return out
