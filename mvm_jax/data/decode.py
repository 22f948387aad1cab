"""Video decoding with PyAV (FFmpeg).

Every function returns RGB frames as ``np.uint8`` arrays of shape
``[T, H, W, 3]`` and raises :class:`VideoDecodeError` (naming the file) for a
file that is missing, empty, corrupt, truncated or has no video stream, so a
caller can skip the file and carry on.

- :func:`probe_video`: frame count, frame rate and size without decoding.
- :func:`decode_video`: every frame of a video.
- :func:`decode_frames`: only the frames at given indices; seeks to the
  keyframe before the first wanted frame when the container allows it, stops
  after the last one and converts only the wanted frames to RGB.
- :class:`VideoCache`: an in-memory LRU cache of decoded frame ranges that
  answers like :func:`decode_frames` (for data sets small enough to hold).

A video is named by a file path or by a :class:`VideoBlob`: encoded video
bytes held elsewhere (e.g. a record of an array_record file, read through
tensorflow-datasets), named by a string such as ``'tfds://name/split/12'``.
Every function and the cache accept either; a blob is opened from memory
(``av.open(io.BytesIO(data))``) and its name serves in messages and as the
cache key.

Frame indices count presented frames from 0. When seeking, the index of a
decoded frame is derived from its timestamp assuming a constant frame rate
(``round((pts - start) * time_base * fps)``); when that is impossible (no
timestamps, the seek lands after the wanted frame, decode errors after the
seek) decoding restarts from the first frame and counts frames instead.

Optional downscaling (``short_side``) happens inside FFmpeg's swscale during
the YUV->RGB conversion, which is much cheaper than converting full-size
frames (a 1280x720 frame: ~5 ms to RGB at full size, ~1 ms at 128 px).
"""

from __future__ import annotations

import collections
import dataclasses
import fractions
import io
import threading
from collections.abc import Callable, Iterator, Sequence

import av
import numpy as np

# A container's frame count is metadata; the decoder may produce a few frames
# fewer. Indices past the end by at most this many frames are clamped to the
# last decoded frame; more missing frames count as a truncated file.
MAX_MISSING_FRAMES = 4


class VideoDecodeError(RuntimeError):
  """A video file cannot be read. ``path`` names the file, ``reason`` says why."""

  def __init__(self, path, reason: str):
    super().__init__(str(path), reason)
    self.path = str(path)
    self.reason = reason

  def __str__(self) -> str:
    return f'cannot decode video {self.path!r}: {self.reason}'


@dataclasses.dataclass(frozen=True)
class VideoInfo:
  """Metadata of a video's first video stream."""

  num_frames: int  # from container metadata, else counted by demuxing
  fps: float
  height: int
  width: int


class VideoBlob(str):
  """A video stored as encoded bytes (not a file), named by a string.

  A ``str`` (its name, e.g. ``'tfds://my_videos/train/12'``), so it stands
  wherever a path does: ``VideoRecord.path``, error messages, cache keys.
  The bytes come from ``reader()``, a picklable zero-argument callable, read
  at most once per blob (the result is kept) and only when the video is
  opened, or from ``data`` when the caller already has them. Pickling keeps
  the name and the reader and drops the bytes, so a blob stays small when
  shipped to a worker process, which reads the bytes itself (a blob without
  a reader pickles its bytes).
  """

  def __new__(cls, name: str, reader: Callable[[], bytes] | None, data: bytes | None = None):
    blob = super().__new__(cls, name)
    blob.reader = reader
    blob._data = data
    return blob

  @property
  def holds_bytes(self) -> bool:
    """Whether the encoded video is in memory (given, or read once); a blob unpickled with a reader
    holds none until it is read."""
    return self._data is not None

  def read(self) -> bytes:
    """The encoded video (container bytes, e.g. an mp4 file's content)."""
    if self._data is None:
      self._data = bytes(self.reader())
    return self._data

  def __reduce__(self):
    if self.reader is None:
      return (VideoBlob, (str(self), None, self._data))
    return (VideoBlob, (str(self), self.reader))

  def __repr__(self) -> str:
    return f'VideoBlob({str(self)!r})'


def _open(path) -> av.container.InputContainer:
  if isinstance(path, VideoBlob):
    try:
      data = path.read()
    except Exception as e:  # any storage error: the video is unreadable.
      raise VideoDecodeError(path, f'cannot read the video bytes ({type(e).__name__}: {e})') from e
    if not data:
      raise VideoDecodeError(path, 'empty video (0 bytes)')
    try:
      return av.open(io.BytesIO(data), mode='r')
    except (av.FFmpegError, OSError, ValueError) as e:
      raise VideoDecodeError(path, f'cannot open container ({e})') from e
  try:
    return av.open(str(path), mode='r')
  except FileNotFoundError as e:
    raise VideoDecodeError(path, 'file not found') from e
  except (av.FFmpegError, OSError, ValueError) as e:
    raise VideoDecodeError(path, f'cannot open container ({e})') from e


def _video_stream(container, path):
  if not container.streams.video:
    raise VideoDecodeError(path, 'no video stream')
  return container.streams.video[0]


def _fps(stream) -> fractions.Fraction | None:
  for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
    if rate:
      return fractions.Fraction(rate)
  return None


def _target_size(height: int, width: int, short_side: int | None):
  """(height, width) after downscaling so min(h, w) <= short_side (never upscales)."""
  if not short_side or short_side <= 0 or min(height, width) <= short_side:
    return height, width
  scale = short_side / min(height, width)
  return max(1, round(height * scale)), max(1, round(width * scale))


def _to_rgb(frame, size) -> np.ndarray:
  h, w = size
  if (frame.height, frame.width) == (h, w):
    return frame.to_ndarray(format='rgb24')
  return frame.to_ndarray(format='rgb24', height=h, width=w, interpolation='AREA')


def probe_video(path) -> VideoInfo:
  """Reads the stream metadata of ``path``; decodes nothing.

  ``num_frames`` is the container's frame count when it has one; otherwise
  the video packets are counted (demuxing only).
  """
  with _open(path) as container:
    stream = _video_stream(container, path)
    fps = _fps(stream)
    num_frames = int(stream.frames or 0)
    try:
      if num_frames <= 0:
        num_frames = sum(1 for p in container.demux(stream) if p.size)
    except (av.FFmpegError, OSError, ValueError) as e:
      raise VideoDecodeError(path, f'cannot demux ({e})') from e
    height = stream.codec_context.height
    width = stream.codec_context.width
  if num_frames <= 0:
    raise VideoDecodeError(path, 'video stream has no frames')
  return VideoInfo(num_frames=num_frames, fps=float(fps or 0.0), height=height, width=width)


def _count_frames(container, stream) -> Iterator[tuple[int, av.VideoFrame]]:
  """(index, frame) in presentation order, counting from the first frame."""
  for i, frame in enumerate(container.decode(stream)):
    yield i, frame


def _decode_selected_seeking(path, wanted: np.ndarray, size_fn, thread_type) -> dict[int, np.ndarray] | None:
  """Seek-based decode of the sorted unique indices ``wanted``.

  Returns None when seeking cannot be trusted (the caller then decodes from
  the start).
  """
  first, last = int(wanted[0]), int(wanted[-1])
  with _open(path) as container:
    stream = _video_stream(container, path)
    if thread_type:
      stream.thread_type = thread_type
    fps, tb = _fps(stream), stream.time_base
    if fps is None or tb is None:
      return None
    start_pts = stream.start_time or 0
    seconds_per_index = 1 / fps
    try:
      container.seek(
        start_pts + int(first * seconds_per_index / tb), stream=stream, backward=True, any_frame=False
      )
      out, size, wanted_set = {}, None, set(wanted.tolist())
      for n, frame in enumerate(container.decode(stream)):
        if frame.pts is None:
          return None
        index = round((frame.pts - start_pts) * tb * fps)
        if n == 0 and index > first:
          return None  # seek overshot the wanted frame.
        if index in wanted_set:
          if size is None:
            size = size_fn(frame.height, frame.width)
          out[index] = _to_rgb(frame, size)
        if index >= last:
          break
    except (av.FFmpegError, OSError, ValueError):
      return None
  return out


def _decode_selected_counting(
  path, wanted: np.ndarray, size_fn, thread_type
) -> tuple[dict[int, np.ndarray], int]:
  """Decodes from the first frame; returns ({index: rgb}, frames decoded)."""
  last = int(wanted[-1])
  wanted_set = set(wanted.tolist())
  out, size, count = {}, None, 0
  with _open(path) as container:
    stream = _video_stream(container, path)
    if thread_type:
      stream.thread_type = thread_type
    try:
      last_frame = None
      for index, frame in _count_frames(container, stream):
        count = index + 1
        last_frame = frame
        if index in wanted_set:
          if size is None:
            size = size_fn(frame.height, frame.width)
          out[index] = _to_rgb(frame, size)
        if index >= last:
          break
    except (av.FFmpegError, OSError, ValueError) as e:
      if count == 0:
        raise VideoDecodeError(path, f'decoding failed ({e})') from e
      # A damaged tail: keep what decoded; missing frames are handled below.
    if count == 0:
      raise VideoDecodeError(path, 'video stream has no decodable frames')
    missing = [i for i in wanted_set if i not in out]
    if missing:
      if max(missing) >= count + MAX_MISSING_FRAMES:
        raise VideoDecodeError(path, f'truncated: decoded {count} frames, frame {max(missing)} was requested')
      if size is None:
        size = size_fn(last_frame.height, last_frame.width)
      tail = _to_rgb(last_frame, size)
      for i in missing:  # indices just past the end: repeat the last frame.
        out[i] = tail
  return out, count


def decode_frames(
  path,
  indices: Sequence[int] | np.ndarray,
  *,
  short_side: int | None = None,
  seek: bool = True,
  thread_type: str | None = 'AUTO',
) -> np.ndarray:
  """Decodes the frames at ``indices`` of ``path``.

  Args:
    path: video file or :class:`VideoBlob`.
    indices: int [N] frame indices (any order, repeats allowed), >= 0.
    short_side: if set and the frame's short side is larger, frames are
      downscaled (area filter, aspect kept) so their short side is this.
    seek: seek to the keyframe before ``min(indices)`` (falls back to decoding
      from the start when the container cannot be trusted to seek).
    thread_type: FFmpeg decoder threading ('AUTO', 'FRAME', 'SLICE' or None).

  Returns:
    uint8 [N, H, W, 3] RGB, row i is frame ``indices[i]``.

  Raises:
    VideoDecodeError: unreadable file, or indices well past the last frame.
  """
  indices = np.asarray(indices, dtype=np.int64)
  if indices.ndim != 1 or indices.size == 0:
    raise ValueError(f'indices must be a non-empty 1-D sequence, got shape {indices.shape}')
  if indices.min() < 0:
    raise ValueError(f'indices must be >= 0, got {indices.min()}')
  wanted = np.unique(indices)
  size_fn = lambda h, w: _target_size(h, w, short_side)  # noqa: E731
  frames = None
  if seek and wanted[0] > 0:
    frames = _decode_selected_seeking(path, wanted, size_fn, thread_type)
    if frames is not None and len(frames) != len(wanted):
      frames = None  # e.g. indices past the end: let the counting path decide.
  if frames is None:
    frames, _ = _decode_selected_counting(path, wanted, size_fn, thread_type)
  return np.stack([frames[int(i)] for i in indices])


def decode_video(path, *, short_side: int | None = None, thread_type: str | None = 'AUTO') -> np.ndarray:
  """Decodes every frame of ``path``.

  Returns:
    uint8 [T, H, W, 3] RGB (downscaled as in :func:`decode_frames`).
  """
  frames, size = [], None
  with _open(path) as container:
    stream = _video_stream(container, path)
    if thread_type:
      stream.thread_type = thread_type
    try:
      for frame in container.decode(stream):
        if size is None:
          size = _target_size(frame.height, frame.width, short_side)
        frames.append(_to_rgb(frame, size))
    except (av.FFmpegError, OSError, ValueError) as e:
      if not frames:
        raise VideoDecodeError(path, f'decoding failed ({e})') from e
  if not frames:
    raise VideoDecodeError(path, 'video stream has no decodable frames')
  return np.stack(frames)


class VideoCache:
  """LRU cache of decoded videos, answering like :func:`decode_frames`.

  Meant for data sets small enough to keep decoded in memory (e.g. the
  built-in clips), where decoding dominates the input pipeline: the first
  request for a video decodes every frame of the requested range once, later
  requests only index the cached frames.

  Entries are keyed by ``(path, short_side)``; an entry holds the uint8
  ``[stop - start, H, W, 3]`` frames of one contiguous range ``[start, stop)``
  (a request for another range of a cached video re-decodes the union of both
  ranges, so records sharing a file share one entry). At most ``max_videos``
  entries are kept; the least recently used one is dropped first.

  Memory: an entry takes ``frames x H x W x 3`` bytes, H x W being the size
  after downscaling to ``short_side`` (e.g. 99 frames at 128 x 228: 8.7 MB),
  plus as much again while it is being decoded. Each process (data worker)
  holds its own cache; pickling (sending it to a worker) drops the contents.

  Results equal :func:`decode_frames`'s bit for bit (for a video whose frame
  size does not change mid-stream). Failures are never cached: a range that
  cannot be decoded is remembered as uncacheable and its requests go to
  :func:`decode_frames`, which raises :class:`VideoDecodeError` for an
  unreadable file as it would without the cache. Thread-safe.

  Attributes:
    max_videos: capacity, in entries (videos).
    hits / misses: requests served from the cache / that decoded a range.
  """

  def __init__(self, max_videos: int):
    if not isinstance(max_videos, int) or max_videos < 1:
      raise ValueError(f'max_videos must be a positive integer, got {max_videos!r}')
    self.max_videos = max_videos
    self._lock = threading.Lock()
    # (path, short_side) -> (start, uint8 [stop - start, H, W, 3], read-only)
    self._entries: collections.OrderedDict = collections.OrderedDict()
    self._uncacheable: set[tuple] = set()  # (path, short_side, start, stop)
    self.hits = 0
    self.misses = 0

  def __getstate__(self):
    return {'max_videos': self.max_videos}

  def __setstate__(self, state):
    self.__init__(state['max_videos'])

  def __len__(self) -> int:
    return len(self._entries)

  def __repr__(self) -> str:
    nbytes = sum(f.nbytes for _, f in self._entries.values())
    return (
      f'VideoCache(videos={len(self)}/{self.max_videos}, '
      f'{nbytes / 2**20:.1f} MiB, hits={self.hits}, misses={self.misses})'
    )

  def get_frames(
    self, path, indices: Sequence[int] | np.ndarray, *, start: int, stop: int, short_side: int | None = None
  ) -> np.ndarray:
    """``decode_frames(path, indices, short_side=short_side)``, cached.

    Args:
      path: video file or :class:`VideoBlob` (its name is the cache key).
      indices: int [N] frame indices, expected inside ``[start, stop)`` (others
        are decoded directly, without the cache).
      start / stop: the frame range to decode and cache on a miss (the
        record's usable frames; indices up to ``MAX_MISSING_FRAMES`` past the
        last decodable frame repeat it, as in :func:`decode_frames`).
      short_side: as in :func:`decode_frames`; part of the cache key.

    Returns:
      uint8 [N, H, W, 3] RGB, row i is frame ``indices[i]`` (a new array).

    Raises:
      VideoDecodeError: as :func:`decode_frames`.
    """
    indices = np.asarray(indices, dtype=np.int64)
    short_side = short_side if short_side and short_side > 0 else None
    direct = lambda: decode_frames(path, indices, short_side=short_side)  # noqa: E731
    if (
      indices.ndim != 1
      or indices.size == 0
      or not 0 <= start < stop
      or indices.min() < start
      or indices.max() >= stop
    ):
      return direct()
    key = (str(path), short_side)
    with self._lock:
      entry = self._entries.get(key)
      if entry is not None:
        self._entries.move_to_end(key)
        lo, frames = entry
        if lo <= start and stop <= lo + len(frames):
          self.hits += 1
          return frames[indices - lo]
      uncacheable = key + (start, stop) in self._uncacheable
      if not uncacheable:
        self.misses += 1
    if uncacheable:
      return direct()
    lo, hi = start, stop
    if entry is not None:  # cover the cached range too: one entry per video.
      lo, hi = min(lo, entry[0]), max(hi, entry[0] + len(entry[1]))
    try:
      frames = decode_frames(path, np.arange(lo, hi), short_side=short_side)
    except VideoDecodeError:
      with self._lock:
        self._uncacheable.add(key + (start, stop))
      return direct()  # raises for an unreadable file; serves a damaged one.
    frames.flags.writeable = False
    with self._lock:
      self._entries[key] = (lo, frames)
      self._entries.move_to_end(key)
      while len(self._entries) > self.max_videos:
        self._entries.popitem(last=False)
    return frames[indices - lo]
