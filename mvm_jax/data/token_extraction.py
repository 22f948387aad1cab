"""Write VIMPAC's token datasets: decode, centre-crop, tokenize and store every frame once.

:func:`extract_tokens` decodes every frame of each record's frame range at
``target_fps`` (<= 0: the video's native rate; positions as in the samplers,
:class:`~mvm_jax.data.transforms.Timeline`), resizes the short side to
``crop_size`` and takes the centre ``S x S`` crop (no flip; VIMPAC's
pre-processing), normalizes like the pixel pipeline and calls ``tokenize`` on
fixed-size batches of frames. The result is the tfds dataset that
:mod:`mvm_jax.data.tokens` describes and reads. Tokens of finished videos are
saved as they go in a work directory (``data_dir/name/_partial/``, one
``.npz`` per chunk of ``videos_per_chunk`` records), so an interrupted
extraction rerun with the same arguments tokenizes only the chunks not saved
yet. Command line: ``python -m mvm_jax.tools.extract_tokens``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from mvm_jax import progress as progress_lib
from mvm_jax.data import decode, tfds_video, transforms
from mvm_jax.data.sources import VideoRecord, VideoSource
from mvm_jax.data.tokens import (
  FPS_KEY,
  LABEL_KEY,
  NUM_FRAMES_KEY,
  PATH_KEY,
  TOKEN_FORMAT,
  TOKEN_INFO_FILE,
  TOKENS_KEY,
  TOKENS_VERSION,
)

# Codes are stored as uint16.
MAX_VOCAB_SIZE = 2**16
# The work directory of an extraction (data_dir/name/PARTIAL_DIR by default).
PARTIAL_DIR = '_partial'
_ARGS_FILE = 'args.json'
# Frames decoded per decode_frames call (bounds the memory of full-size frames).
_DECODE_FRAMES = 256


def _split_file_name(split: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]', '_', split)


# ---------------------------------------------------------------------------
# Writing.


class ExtractProgress(progress_lib.SplitProgress):
  """Progress of :func:`extract_tokens` over all splits (updated after each video).

  ``done`` counts videos finished in any way: tokenized, skipped, or taken from a previous run's
  saved work (``resumed``, counted chunk by chunk, untimed). Rates and ETA count this run's work
  only. Its line adds the resumed videos, frames/s, frames and skipped videos.
  """

  def __init__(self, total: int):
    super().__init__('tokenizing', total)
    self.frames = 0  # token frames of the readable videos (this run and resumed)
    self.tokenized_frames = 0  # frames tokenized by this run (without padding)
    self.tokenize_calls = 0  # calls of the tokenize function by this run

  @property
  def resumed(self) -> int:
    """Of ``done``: read from the work directory of an earlier run."""
    return self.untimed

  @property
  def frame_rate(self) -> float:
    """Frames per second tokenized by this run."""
    return self.tokenized_frames / max(self.elapsed, 1e-9)

  def details(self) -> list[str]:
    resumed = [f'{self.resumed} resumed'] if self.resumed else []
    return [*resumed, f'{self.frame_rate:.1f} frames/s', f'{self.frames} frames', f'{self.skipped} skipped']


@dataclasses.dataclass(frozen=True)
class _VideoFrames:
  """A decoded, centre-cropped video: uint8 [F, S, S, 3] in token order, its frame rate."""

  frames: np.ndarray
  fps: float


def _load_video(
  record: VideoRecord,
  *,
  crop_size: int,
  target_fps: float,
  short_side: int | None,
  resize_short_side: int = 0,
) -> _VideoFrames | str:
  """The frames to tokenize of one record, or why it cannot be read.

  Every position of the record's frame range at ``target_fps`` (the samplers'
  :class:`~mvm_jax.data.transforms.Timeline`), short side resized to
  ``resize_short_side`` (0: ``crop_size``) and centre-cropped to ``crop_size``
  (:func:`~mvm_jax.data.transforms.eval_view`), reversed in time for
  ``record.reverse``.
  """
  try:
    info = decode.probe_video(record.path)
    stop = record.frame_stop if record.frame_stop is not None else info.num_frames
    if stop <= record.frame_start:
      raise decode.VideoDecodeError(record.path, f'no frames in the range [{record.frame_start}, {stop})')
    timeline = transforms.Timeline.resampled(
      record.frame_start, stop, source_fps=info.fps, target_fps=target_fps
    )
    indices = timeline.frames(np.arange(timeline.length))
    crops = np.empty((len(indices), crop_size, crop_size, 3), np.uint8)
    for lo in range(0, len(indices), _DECODE_FRAMES):
      part = indices[lo : lo + _DECODE_FRAMES]
      frames = decode.decode_frames(record.path, part, short_side=short_side)
      crops[lo : lo + len(part)] = transforms.eval_view(
        frames, crop_size=crop_size, resize_short_side=resize_short_side
      )
  except decode.VideoDecodeError as e:
    return str(e)
  if record.reverse:
    crops = np.ascontiguousarray(transforms.reverse_time(crops))
  return _VideoFrames(crops, timeline.fps)


class _Tokenizer:
  """Calls ``tokenize`` on exactly ``frames_per_call`` frames and checks what it returns."""

  def __init__(self, tokenize, *, frames_per_call: int, mean, std, vocab_size: int, token_shape=None):
    self._tokenize = tokenize
    self.frames_per_call = frames_per_call
    self._mean, self._std = tuple(mean), tuple(std)
    self._vocab_size = vocab_size
    self.token_shape = token_shape  # (h, w), known after the first call
    self.calls = 0

  def __call__(self, frames: np.ndarray) -> np.ndarray:
    """uint8 [n <= frames_per_call, S, S, 3] -> uint16 [n, h, w]."""
    n = frames.shape[0]
    batch = np.zeros((self.frames_per_call, *frames.shape[1:]), np.float32)
    batch[:n] = transforms.normalize(frames, self._mean, self._std)
    codes = np.asarray(self._tokenize(batch))
    self.calls += 1
    if (
      codes.ndim != 3 or codes.shape[0] != self.frames_per_call or not np.issubdtype(codes.dtype, np.integer)
    ):
      raise ValueError(
        f'tokenize must map float32 {batch.shape} frames to integer codes [{self.frames_per_call}, h, w], '
        f'got {codes.dtype} {codes.shape}'
      )
    if self.token_shape is None:
      self.token_shape = tuple(codes.shape[1:])
    elif tuple(codes.shape[1:]) != self.token_shape:
      raise ValueError(f'tokenize returned codes of shape {codes.shape[1:]}, earlier {self.token_shape}')
    codes = codes[:n]
    if n and (codes.min() < 0 or codes.max() >= self._vocab_size):
      raise ValueError(
        f'tokenize returned codes in [{codes.min()}, {codes.max()}], outside [0, vocab_size={self._vocab_size})'
      )
    return codes.astype(np.uint16)


class _Batcher:
  """Feeds the frames of consecutive videos to a :class:`_Tokenizer` in full batches.

  ``add(slot, frames)`` queues a video's frames; whenever ``frames_per_call``
  frames are queued they are tokenized together (frames of several videos
  share a call). Both ``add`` and ``flush`` (tokenizes the rest, padded)
  return the slots whose tokens are now complete, in order, as
  ``(slot, uint16 [F, h, w])``.
  """

  def __init__(self, tokenizer: _Tokenizer):
    self._tokenizer = tokenizer
    self._queue: collections.deque = collections.deque()  # [slot, frames] still to tokenize
    self._queued = 0
    self._pieces: dict[Any, list[np.ndarray]] = {}  # slot -> token pieces so far
    self._left: dict[Any, int] = {}  # slot -> frames not tokenized yet

  def add(self, slot, frames: np.ndarray) -> list[tuple[Any, np.ndarray]]:
    self._pieces[slot], self._left[slot] = [], len(frames)
    self._queue.append([slot, frames])
    self._queued += len(frames)
    done = []
    while self._queued >= self._tokenizer.frames_per_call:
      done += self._run(self._tokenizer.frames_per_call)
    return done

  def flush(self) -> list[tuple[Any, np.ndarray]]:
    done = []
    while self._queued:
      done += self._run(min(self._queued, self._tokenizer.frames_per_call))
    return done

  def _run(self, n: int) -> list[tuple[Any, np.ndarray]]:
    parts, owners = [], []
    while n:
      entry = self._queue[0]
      slot, frames = entry
      take = min(n, len(frames))
      parts.append(frames[:take])
      owners.append((slot, take))
      if take == len(frames):
        self._queue.popleft()
      else:
        entry[1] = frames[take:]
      n -= take
      self._queued -= take
    codes = self._tokenizer(np.concatenate(parts) if len(parts) > 1 else parts[0])
    done, at = [], 0
    for slot, take in owners:
      self._pieces[slot].append(codes[at : at + take])
      at += take
      self._left[slot] -= take
      if not self._left[slot]:
        del self._left[slot]
        pieces = self._pieces.pop(slot)
        done.append((slot, np.concatenate(pieces) if len(pieces) > 1 else pieces[0]))
    return done


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
  """Writes ``path`` via a temporary file in its directory and a rename (permissions per umask)."""
  tmp = os.path.join(
    os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp'
  )
  try:
    with open(tmp, 'xb') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write_json(path: str, value) -> None:
  _write_atomic(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def _source_fingerprint(source: VideoSource) -> str:
  """Identifies a split's source cheaply (its name, size and classes; no record is read)."""
  text = json.dumps([source.name, len(source), list(source.class_names)])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _chunk_path(work_dir: str, split: str, chunk: int) -> str:
  return os.path.join(work_dir, f'{_split_file_name(split)}-{chunk:06d}.npz')


def _save_chunk(path: str, records: Sequence[VideoRecord], results: list, token_shape) -> None:
  """One chunk of videos: their tokens (concatenated), frame counts, rates, labels, paths, errors.

  ``results[i]``: (uint16 [F, h, w] tokens, fps) or an error message.
  """
  ok = [r for r in results if not isinstance(r, str)]
  h, w = token_shape if token_shape is not None else (0, 0)
  arrays = {
    'tokens': np.concatenate([t for t, _ in ok]) if ok else np.zeros((0, h, w), np.uint16),
    'num_frames': np.array([0 if isinstance(r, str) else len(r[0]) for r in results], np.int64),
    'fps': np.array([0.0 if isinstance(r, str) else r[1] for r in results], np.float64),
    'label': np.array([r.label for r in records], np.int64),
    'path': np.array([str(r.path) for r in records], dtype=str),
    'error': np.array([r if isinstance(r, str) else '' for r in results], dtype=str),
    'token_shape': np.array([h, w], np.int64),
  }
  _write_atomic(path, lambda f: np.savez(f, **arrays))


def _load_chunk(path: str, tokens: bool = True) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files if tokens or k != 'tokens'}


def _prepare_work_dir(work_dir: str, args: dict, overwrite: bool) -> bool:
  """Creates the work directory or checks it holds work of the same arguments.

  Returns whether earlier work is resumed.
  """
  args_path = os.path.join(work_dir, _ARGS_FILE)
  if os.path.exists(args_path):
    with open(args_path) as f:
      saved = json.load(f)
    if saved == args:
      return True
    differ = sorted(k for k in set(saved) | set(args) if saved.get(k) != args.get(k))
    if not overwrite:
      raise ValueError(
        f'{work_dir!r} holds the partial tokens of an extraction with other arguments (differing: '
        f'{differ}); rerun with the same arguments to resume it, pass overwrite=True (--overwrite) to '
        'discard it, or use another work directory'
      )
    logging.warning('Discarding the partial tokens in %s (other arguments: %s)', work_dir, differ)
    _remove_work(work_dir)
  os.makedirs(work_dir, exist_ok=True)
  _write_json(args_path, args)
  return False


def _remove_work(work_dir: str) -> None:
  """Removes the files an extraction wrote in ``work_dir``, then the directory if empty."""
  for entry in os.listdir(work_dir):
    if entry == _ARGS_FILE or entry.endswith(('.npz', '.tmp')):
      os.remove(os.path.join(work_dir, entry))
  if not os.listdir(work_dir):
    os.rmdir(work_dir)


class _TokenVideos(tfds_video.SplitsBuilder, skip_registration=True):
  """A tfds builder for token datasets.

  Writes ``token_info.json`` next to the dataset's files while tfds prepares
  them in its temporary directory, so both appear together.
  """

  VERSION = tfds.core.Version(TOKENS_VERSION)

  def __init__(self, *, class_names=(), token_shape=(0, 0), token_info=None, **kwargs):
    self._class_names = tuple(class_names)
    self._token_shape = tuple(token_shape)
    self._token_info = token_info or {}
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description='VQ tokens of video frames written by mvm_jax.tools.extract_tokens.',
      features=tfds.features.FeaturesDict(
        {
          TOKENS_KEY: tfds.features.Tensor(
            shape=(None, *self._token_shape), dtype=np.uint16, encoding=tfds.features.Encoding.BYTES
          ),
          LABEL_KEY: tfds.features.ClassLabel(names=self._class_names),
          PATH_KEY: tfds.features.Text(),
          NUM_FRAMES_KEY: tfds.features.Scalar(dtype=np.int64),
          FPS_KEY: tfds.features.Scalar(dtype=np.float32),
        }
      ),
      disable_shuffling=True,  # example i of a split is the i-th readable video.
    )

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    # self.data_dir is tfds's temporary directory here, renamed when all is written.
    _write_json(os.path.join(self.data_dir, TOKEN_INFO_FILE), self._token_info)


def _chunk_examples(paths: list[str], videos_per_chunk: int) -> Iterator[tuple[int, dict]]:
  """The examples of one split from its saved chunks: (record index, features)."""
  for chunk, path in enumerate(paths):
    z = _load_chunk(path)
    at = 0
    for i, n in enumerate(z['num_frames'].tolist()):
      if z['error'][i]:
        continue
      yield (
        chunk * videos_per_chunk + i,
        {
          TOKENS_KEY: z['tokens'][at : at + n],
          LABEL_KEY: int(z['label'][i]),
          PATH_KEY: str(z['path'][i]),
          NUM_FRAMES_KEY: n,
          FPS_KEY: float(z['fps'][i]),
        },
      )
      at += n


def extract_tokens(
  split_sources: Mapping[str, VideoSource],
  tokenize: Callable[[np.ndarray], Any],
  *,
  name: str,
  data_dir: str,
  vocab_size: int,
  crop_size: int,
  target_fps: float,
  mean: Sequence[float],
  std: Sequence[float],
  short_side: int | None = None,
  resize_short_side: int = 0,
  frames_per_call: int = 16,
  tokenizer: str = '',
  overwrite: bool = False,
  progress: Callable[[ExtractProgress], None] | None = None,
  work_dir: str | None = None,
  videos_per_chunk: int = 64,
  num_threads: int = 4,
) -> ExtractProgress:
  """Tokenizes the videos of ``split_sources`` into the tfds dataset ``name`` (see module doc).

  Args:
    split_sources: split name -> source (e.g. ``pipeline.build_video_source(config.data, split)``).
    tokenize: float32 [N, S, S, 3] frames, normalized ``(x / 255 - mean) / std``
      (:func:`~mvm_jax.data.transforms.normalize`) -> integer codes [N, h, w]
      in ``[0, vocab_size)`` (numpy or jax array). Always called with
      ``N = frames_per_call`` (the last batch padded with zeros), so a jitted
      tokenizer compiles once; frames of consecutive videos share a call.
    name: dataset name (a tfds name: lowercase letters, digits, ``_``).
    data_dir: tfds data directory to write into.
    vocab_size: codes are in ``[0, vocab_size)``; at most 65536 (uint16).
    crop_size: S: the short side is resized to S (or ``resize_short_side``),
      then the centre S x S crop.
    resize_short_side: resize the short side to this before the centre crop
      (VIMPAC's official fine-tuning tokens also use 160 for S = 128); 0: to S (its
      pre-training tokens).
    target_fps: tokenize frames at this rate (<= 0: every frame, native rate).
    mean / std: the normalization the tokenizer expects (config.data.mean / std).
    short_side: FFmpeg downscales frames whose short side exceeds this
      before cropping (None / 0: native resolution).
    frames_per_call: N, frames per ``tokenize`` call.
    tokenizer: free-text description of the tokenizer, stored in
      ``token_info.json`` (and part of the arguments a resume must match).
    overwrite: replace an existing dataset of that name; discard partial work
      of other arguments in the work directory.
    progress: called after each video (and each resumed chunk) with the
      running :class:`ExtractProgress`.
    work_dir: where finished chunks are saved; default ``data_dir/name/_partial``.
    videos_per_chunk: records per saved chunk (the unit of resuming).
    num_threads: threads decoding and cropping videos ahead of the tokenizer.

  Returns:
    The final progress (counts, time, skipped paths).

  Raises:
    FileExistsError: the dataset exists and ``overwrite`` is False.
    ValueError: a bad argument, splits with different class names, partial
      work of other arguments (without ``overwrite``), a tokenizer returning
      codes of the wrong shape, dtype or range, or no readable video at all.
  """
  if not split_sources:
    raise ValueError('no splits to extract')
  if not isinstance(vocab_size, int) or not 1 <= vocab_size <= MAX_VOCAB_SIZE:
    raise ValueError(
      f'vocab_size must be in [1, {MAX_VOCAB_SIZE}] (codes are stored as uint16), got {vocab_size!r}'
    )
  for key, value in (('crop_size', crop_size), ('frames_per_call', frames_per_call)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{key} must be a positive integer, got {value!r}')
  if not isinstance(videos_per_chunk, int) or videos_per_chunk < 1 or num_threads < 1:
    raise ValueError(
      f'need videos_per_chunk >= 1 and num_threads >= 1, got {videos_per_chunk}, {num_threads}'
    )
  class_names = tfds_video.common_class_names(split_sources)
  version_dir = os.path.join(data_dir, name, TOKENS_VERSION)
  if os.path.exists(version_dir) and not overwrite:
    raise FileExistsError(f'tfds dataset {name!r} already exists in {version_dir!r}')
  short_side = short_side if short_side and short_side > 0 else None
  target_fps = float(target_fps) if target_fps > 0 else 0.0
  settings = {
    'vocab_size': vocab_size,
    'crop_size': crop_size,
    'target_fps': target_fps,
    'mean': [float(m) for m in mean],
    'std': [float(s) for s in std],
    'decode_short_side': short_side or 0,
    'resize_short_side': int(resize_short_side),
    'tokenizer': tokenizer,
  }
  args = dict(
    settings,
    format=TOKEN_FORMAT,
    videos_per_chunk=videos_per_chunk,
    splits={s: [len(src), _source_fingerprint(src)] for s, src in split_sources.items()},
  )
  work_dir = work_dir or os.path.join(data_dir, name, PARTIAL_DIR)
  _prepare_work_dir(work_dir, args, overwrite)

  state = ExtractProgress(total=sum(len(s) for s in split_sources.values()))
  tok = _Tokenizer(tokenize, frames_per_call=frames_per_call, mean=mean, std=std, vocab_size=vocab_size)
  load = functools.partial(
    _load_video,
    crop_size=crop_size,
    target_fps=target_fps,
    short_side=short_side,
    resize_short_side=int(resize_short_side),
  )
  chunk_paths: dict[str, list[str]] = {}
  for split, source in split_sources.items():
    state.split = split
    paths = chunk_paths[split] = []
    for chunk, lo in enumerate(range(0, len(source), videos_per_chunk)):
      path = _chunk_path(work_dir, split, chunk)
      paths.append(path)
      hi = min(lo + videos_per_chunk, len(source))
      if os.path.exists(path):
        z = _load_chunk(path, tokens=False)
        bad = [str(p) for p, e in zip(z['path'], z['error']) if e]
        shape = tuple(z['token_shape'].tolist())
        if shape != (0, 0):
          if tok.token_shape is not None and shape != tok.token_shape:
            raise ValueError(f'{path}: token shape {shape}, other chunks {tok.token_shape}')
          tok.token_shape = shape
        state.update(hi - lo, timed=False)
        state.skipped += len(bad)
        state.skipped_paths += bad
        state.frames += int(z['num_frames'].sum())
        if progress is not None:
          progress(state)
        continue
      _extract_chunk(source, range(lo, hi), path, tok, load, num_threads, state, progress)

  if tok.token_shape is None:
    raise ValueError(
      f'no readable video in {sorted(split_sources)}: nothing to write ({state.skipped} skipped)'
    )
  split_stats = {}
  for split, paths in chunk_paths.items():
    counts = [_load_chunk(p, tokens=False) for p in paths]
    split_stats[split] = {
      'videos': sum(int((c['error'] == '').sum()) for c in counts),
      'skipped': sum(int((c['error'] != '').sum()) for c in counts),
      'frames': sum(int(c['num_frames'].sum()) for c in counts),
    }
  token_info = dict(
    settings, format=TOKEN_FORMAT, name=name, token_shape=list(tok.token_shape), splits=split_stats
  )
  if os.path.exists(version_dir):  # overwrite (checked above)
    shutil.rmtree(version_dir)
  builder = _TokenVideos(
    name=name,
    class_names=class_names,
    token_shape=tok.token_shape,
    token_info=token_info,
    split_examples={
      s: functools.partial(_chunk_examples, paths, videos_per_chunk) for s, paths in chunk_paths.items()
    },
    data_dir=data_dir,
    file_format='array_record',
  )
  with tempfile.TemporaryDirectory(prefix='extract_tokens_') as tmp:
    builder.download_and_prepare(download_dir=tmp)
  _remove_work(work_dir)
  return state


def _extract_chunk(source, indices: range, path, tok: _Tokenizer, load, num_threads, state, progress) -> None:
  """Tokenizes records ``indices`` of ``source`` and saves them as one chunk at ``path``."""
  records = [source[i] for i in indices]
  results: list = [None] * len(records)
  batcher = _Batcher(tok)

  def finish(done):
    for slot, codes in done:
      results[slot] = (codes, results[slot])  # results[slot] held the fps until now
      state.update()
      state.frames += len(codes)
      state.tokenized_frames += len(codes)
      state.tokenize_calls = tok.calls
      if progress is not None:
        progress(state)

  videos = tfds_video.ordered_map(load, records, num_threads)
  try:
    for slot, (record, video) in enumerate(zip(records, videos)):
      if isinstance(video, str):
        logging.warning('Skipping unreadable video: %s', video)
        results[slot] = video
        state.update()
        state.skipped += 1
        state.skipped_paths.append(str(record.path))
        if progress is not None:
          progress(state)
        continue
      results[slot] = video.fps
      finish(batcher.add(slot, video.frames))
    finish(batcher.flush())
  finally:
    videos.close()  # on an error: let the decoding threads finish now
  _save_chunk(path, records, results, tok.token_shape)
