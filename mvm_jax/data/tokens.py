"""Pre-extracted VQ tokens of video frames (VIMPAC): write once, pre-train on them.

VIMPAC pre-trains on the discrete codes of a frozen image tokenizer instead of
pixels. Every frame is tokenized on its own (8x spatial downsampling: a frame
``[S, S, 3]`` -> codes ``[S/8, S/8]`` in ``[0, vocab_size)``), so the codes of
a whole corpus are computed once and stored.

Writing: :func:`mvm_jax.data.token_extraction.extract_tokens` (command line
``python -m mvm_jax.tools.extract_tokens``) stores the centre-cropped frames'
codes as a tfds dataset (array_record) in ``data_dir/name/1.0.0/``, one
example per readable video, in source order::

  tokens      uint16 [F, h, w]   F frames at the dataset's frame rate
  label       ClassLabel         the source's class names
  path        Text               the video file (or blob name)
  num_frames  int64              F
  fps         float32            frame rate of the tokens (0: unknown)

plus ``token_info.json`` (:func:`read_token_info`: vocab_size, token_shape
``[h, w]``, crop_size, target_fps, mean, std, tokenizer description, ...).

Reading (``config.data.source = 'tokens'``, ``data.tfds_name`` /
``data.tfds_data_dir``): :func:`make_token_loader` (what
:func:`mvm_jax.data.make_loader` calls for this source) samples clips in token frames
(``data.sampling`` 'clip' or 'clip_pair', ``data.num_frames`` frames
``data.sampling_rate`` apart, at the dataset's frame rate) and yields::

  {'tokens': int32 [b, T, h, w]  ('clip_pair': [b, 2, T, h, w]),
   'label': int32 [b],
   'index': int32 [b]}           example index in the split

A video shorter than a clip's span gives the clip starting at its first frame,
the frames past its end being PAD (``token_vocab.special_token_ids(
vocab_size).pad_id``), where the pixel samplers would loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import grain
import grain.experimental
import numpy as np

from mvm_jax import token_vocab
from mvm_jax.data import loader_base, tfds_video, transforms
from mvm_jax.data.settings import fail, validate_data_config
from mvm_jax.data.source import Source
from mvm_jax.data.sources import SourceError

# Features of a token dataset.
TOKENS_KEY = 'tokens'  # uint16 [F, h, w]
LABEL_KEY = 'label'  # ClassLabel
PATH_KEY = 'path'  # the video file
NUM_FRAMES_KEY = 'num_frames'  # F
FPS_KEY = 'fps'  # frames per second of the tokens
TOKENS_VERSION = '1.0.0'
TOKEN_INFO_FILE = 'token_info.json'  # in the version directory
TOKEN_FORMAT = 1
# data.sampling values the token loader supports.
TOKEN_SAMPLINGS = ('clip', 'clip_pair')


# ---------------------------------------------------------------------------
# Reading.


def _token_info_path(builder) -> str:
  return os.path.join(str(builder.data_dir), TOKEN_INFO_FILE)


def _read_token_info(builder, name: str) -> dict:
  path = _token_info_path(builder)
  if not os.path.isfile(path):
    raise SourceError(
      'tfds_name',
      f'tfds dataset {name!r} in {str(builder.data_dir)!r} has no {TOKEN_INFO_FILE}: not a token dataset '
      '(write one with python -m mvm_jax.tools.extract_tokens)',
    )
  with open(path) as f:
    return json.load(f)


def read_token_info(name: str, data_dir: str | None = None) -> dict:
  """The ``token_info.json`` of token dataset ``name`` in ``data_dir``.

  Keys: vocab_size, token_shape [h, w], crop_size, target_fps (0: native
  rate), mean, std, decode_short_side, tokenizer (description), name, format,
  splits {split: {videos, skipped, frames}}.

  Raises:
    SourceError: no such (prepared) dataset, or one without token_info.json;
      names ``data.tfds_name`` and the directory.
  """
  return _read_token_info(tfds_video.load_builder(name, data_dir), name)


def token_info(data_config) -> dict:
  """:func:`read_token_info` of the dataset ``config.data`` names (``tfds_name``, ``tfds_data_dir``).

  Raises:
    SourceError (a ValueError): ``data.tfds_name`` unset, or no token dataset
      there (the message names the key and the directory).
  """
  if not data_config.tfds_name:
    where = data_config.tfds_data_dir or 'the tfds default directory'
    raise SourceError('tfds_name', f'unset: name the token dataset (in data.tfds_data_dir: {where})')
  return read_token_info(data_config.tfds_name, data_config.tfds_data_dir or None)


@dataclasses.dataclass(frozen=True)
class TokenRecord:
  """One video's tokens: uint16 [F, h, w], label, path, frames per second (0: unknown)."""

  tokens: np.ndarray
  label: int
  path: str
  fps: float


class TokenSource(Source[TokenRecord]):
  """The examples of one split of a token dataset: ``source[i] -> TokenRecord``.

  A :class:`~mvm_jax.data.source.Source`, named ``'tokens:<name>/<split>'``.

  Reads through ``tfds.builder(name, data_dir).as_data_source(split)``
  (random access, no TensorFlow ops); pickles small, so it runs in Grain
  worker processes.

  Attributes:
    info: the dataset's ``token_info.json`` (:func:`read_token_info`).
    vocab_size / token_shape: from ``info``: codes in [0, vocab_size), frames [h, w].
    class_names / num_classes: the label space.
  """

  def __init__(self, name: str, split: str, *, data_dir: str | None = None):
    """Opens the split.

    Raises:
      SourceError: unknown, unprepared or non-token dataset, unknown or empty split.
    """
    builder = tfds_video.load_builder(name, data_dir)
    features = builder.info.features
    if TOKENS_KEY not in features or LABEL_KEY not in features:
      raise SourceError(
        'tfds_name',
        f'tfds dataset {name!r} has features {sorted(features.keys())}, not those of a token dataset '
        '(write one with python -m mvm_jax.tools.extract_tokens)',
      )
    self.info = _read_token_info(builder, name)
    try:
      data_source = builder.as_data_source(split)
    except Exception as e:  # unknown split, ...
      raise SourceError(
        'tfds_name',
        f'cannot read split {split!r} of token dataset {name!r} (splits: {sorted(builder.info.splits)}): {e}',
      ) from e
    if len(data_source) == 0:
      raise SourceError('tfds_name', f'split {split!r} of token dataset {name!r} has no examples')
    self._data_source = data_source
    self._class_names = tuple(features[LABEL_KEY].names)
    self.name = f'tokens:{name}/{split}'

  @property
  def vocab_size(self) -> int:
    return int(self.info['vocab_size'])

  @property
  def token_shape(self) -> tuple[int, int]:
    return tuple(self.info['token_shape'])

  @property
  def class_names(self) -> tuple[str, ...]:
    return self._class_names

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index) -> TokenRecord:
    example = self._data_source[self.position(index)]
    path = example[PATH_KEY]
    return TokenRecord(
      tokens=example[TOKENS_KEY],
      label=int(example[LABEL_KEY]),
      path=path.decode() if isinstance(path, bytes) else str(path),
      fps=float(example[FPS_KEY]),
    )

  def __repr__(self) -> str:
    return f'TokenSource(name={self.name!r}, records={len(self)}, classes={self.num_classes})'


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenSampler:
  """Clips of a video's token frames (``data.sampling`` 'clip' or 'clip_pair').

  Positions follow :func:`~mvm_jax.data.transforms.temporal_indices` ('clip')
  and :func:`~mvm_jax.data.transforms.clip_pair_indices` ('clip_pair') on the
  video's F frames, except for a video shorter than a clip's span
  ``(T - 1) * sampling_rate + 1``: its clips start at frame 0 and the frames
  past the end are ``pad_id``.

  Attributes:
    num_frames / sampling_rate: T frames ``sampling_rate`` apart.
    pair: two clips (VIMPAC) instead of one.
    pad_id: the id of missing frames' tokens.
    num_samples: k samples per record.
    train: random positions; False: deterministic (centre clip, or the
      pair as far apart as allowed, centred).
    max_distance_s: 'clip_pair': most seconds between the clips' first frames
      (<= 0, or a video of unknown frame rate: unlimited).
    min_distance_s: 'clip_pair': fewest seconds between them (0: none).
  """

  num_frames: int
  sampling_rate: int
  pair: bool
  pad_id: int
  num_samples: int = 1
  train: bool = True
  max_distance_s: float = 0.0
  min_distance_s: float = 0.0

  @property
  def views(self) -> int:
    return 2 if self.pair else 1

  def positions(self, length: int, fps: float, rng: np.random.Generator | None) -> np.ndarray:
    """int64 [k, views, T]: token frame indices of the k samples, -1 = PAD."""
    rng = rng if self.train else None
    t, rate = self.num_frames, self.sampling_rate
    out = np.empty((self.num_samples, self.views, t), np.int64)
    if (t - 1) * rate + 1 > length:  # too short: from the start, PAD past the end
      clip = rate * np.arange(t, dtype=np.int64)
      out[:] = np.where(clip < length, clip, -1)
      return out
    max_distance, min_distance = transforms.pair_distance_limits(
      transforms.Timeline(0, length, 1.0, fps), self.max_distance_s, self.min_distance_s
    )
    for i in range(self.num_samples):
      if self.pair:
        out[i] = transforms.clip_pair_indices(
          0, length, t, rate, rng, max_distance=max_distance, min_distance=min_distance
        )
      else:
        out[i, 0] = transforms.temporal_indices(0, length, t, rate, rng)
    return out

  def __call__(self, record: TokenRecord, rng: np.random.Generator | None) -> np.ndarray:
    """int32 [k, (2,) T, h, w]: the k samples of ``record``."""
    if self.train and rng is None:
      raise ValueError('TokenSampler(train=True) needs an rng')
    tokens = record.tokens
    positions = self.positions(tokens.shape[0], record.fps, rng)
    out = np.full((*positions.shape, *tokens.shape[1:]), self.pad_id, np.int32)
    valid = positions >= 0
    out[valid] = tokens[positions[valid]]
    return out if self.pair else out[:, 0]


class _SampleTokens:
  """Worker side: example index -> {'tokens': int32 [k, ...], 'label': [k], 'index': [k]}."""

  def __init__(self, source: TokenSource, sampler: TokenSampler):
    self._source = source
    self._sampler = sampler

  def __call__(self, index, rng: np.random.Generator) -> dict[str, np.ndarray]:
    index = int(index)
    record = self._source[index]
    tokens = self._sampler(record, rng)
    k = tokens.shape[0]
    return {
      'tokens': tokens,
      'label': np.full((k,), record.label, np.int32),
      'index': np.full((k,), index, np.int32),
    }


class _UnstackTokens(grain.experimental.FlatMapTransform):
  """Main-process side: {'tokens': [k, ...], ...} -> k per-sample dicts."""

  def __init__(self, max_fan_out: int):
    self.max_fan_out = max_fan_out

  def flat_map(self, element):
    return [{key: value[i] for key, value in element.items()} for i in range(element['tokens'].shape[0])]


def make_token_sampler(data_config, source: TokenSource, *, train: bool) -> TokenSampler:
  """The sampler ``config.data`` asks for, on ``source`` (k = 1 when not training).

  Raises:
    ValueError: naming the ``config.data`` key: a sampling other than 'clip' /
      'clip_pair', multi-view testing, or a ``crop_size`` / ``target_fps``
      (when > 0) other than the dataset's.
  """
  dc = data_config
  info = source.info
  if dc.sampling not in TOKEN_SAMPLINGS:
    fail('sampling', f"source 'tokens' samples {list(TOKEN_SAMPLINGS)}, not {dc.sampling!r}")
  for key in ('eval_temporal_views', 'eval_spatial_views'):
    if dc[key] != 1:
      fail(key, f"multi-view testing is not supported with source 'tokens' (got {dc[key]})")
  if dc.crop_size != info['crop_size']:
    fail(
      'crop_size',
      f'{dc.crop_size}, but token dataset {dc.tfds_name!r} was extracted from {info["crop_size"]} px crops '
      f'(token frames {tuple(info["token_shape"])})',
    )
  if dc.target_fps > 0 and not math.isclose(dc.target_fps, info['target_fps']):
    native = ' (the native rate)' if info['target_fps'] <= 0 else ''
    fail(
      'target_fps',
      f'{dc.target_fps}, but token dataset {dc.tfds_name!r} holds frames at {info["target_fps"]} fps{native}; '
      'set it to that (or 0)',
    )
  return TokenSampler(
    num_frames=dc.num_frames,
    sampling_rate=dc.sampling_rate,
    pair=dc.sampling == 'clip_pair',
    pad_id=token_vocab.special_token_ids(int(info['vocab_size'])).pad_id,
    num_samples=dc.repeated_sampling if train else 1,
    train=train,
    max_distance_s=float(dc.clip_pair_max_distance_s),
    min_distance_s=float(dc.clip_pair_min_distance_s),
  )


def make_token_loader(
  data_config,
  *,
  split: str,
  global_batch_size: int,
  seed: int,
  shard_index: int = 0,
  shard_count: int = 1,
  train: bool = True,
  source: TokenSource | None = None,
) -> tuple[grain.IterDataset, loader_base.LoaderInfo]:
  """Builds the host-local pipeline of a token dataset (``config.data.source = 'tokens'``).

  As :func:`mvm_jax.data.pipeline.make_video_loader` (same arguments, sharding,
  seeding, shuffling, repeated sampling, batching, prefetching and exactly
  resumable iterator state), sampling token clips (:class:`TokenSampler`)
  instead of decoding videos.

  Args:
    source: read this :class:`TokenSource` instead of the one
      ``data.tfds_name`` / ``data.tfds_data_dir`` name.

  Returns:
    (dataset, info). The iterator yields ``{'tokens': int32 [b, T, h, w]
    ('clip_pair': [b, 2, T, h, w]), 'label': int32 [b], 'index': int32 [b]}``;
    ``info.skipped`` stays empty (tokens need no decoding).

  Raises:
    ValueError / SourceError: naming the ``config.data`` key at fault.
  """
  validate_data_config(data_config)
  if data_config.source != 'tokens':
    fail('source', f"make_token_loader reads source 'tokens', not {data_config.source!r}")
  batch_size = loader_base.host_batch_size(global_batch_size, shard_count, seed)
  if source is None:
    source = TokenSource(data_config.tfds_name, split, data_dir=data_config.tfds_data_dir or None)
  sampler = make_token_sampler(data_config, source, train=train)
  k = sampler.num_samples
  num_records = len(source)
  ds, shard_records = loader_base.grain_dataset(
    data_config,
    source,
    _SampleTokens(source, sampler),
    lambda shard_records: _UnstackTokens(k),
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    shard_count=shard_count,
    train=train,
  )

  info = loader_base.LoaderInfo(
    num_records=num_records,
    shard_records=shard_records,
    num_classes=source.num_classes,
    class_names=tuple(source.class_names),
    repeated_sampling=k,
    samples_per_epoch=num_records,
    batch_size=batch_size,
    global_batch_size=global_batch_size,
    skipped=loader_base.SkipLog(),
  )
  return ds, info
