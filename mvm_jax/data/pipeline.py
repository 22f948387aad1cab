"""The Grain input pipeline: source -> decoded, augmented, batched host batches.

::

  MapDataset.range(num_records)          record indices of the whole split
    [shard_index::shard_count]           this host's records (disjoint)
    .seed(s).shuffle().repeat()          train: reshuffled every epoch, endless
    .random_map(_SampleRecord)           decode once -> k clips   (workers)
    .to_iter_dataset()
    .mp_prefetch(num_workers)            worker processes, round-robin
    FlatMap(_Unstack)                    k clips -> k samples     (main process)
    .batch(b)                            b = global_batch_size // shard_count
    ThreadPrefetch(prefetch)             overlap with the training step

Per-element randomness comes from ``random_map``'s generator, seeded by the
seed and the element's position in the stream, and workers interleave
round-robin, so the batches depend on ``seed`` (and the shard) only, not on
``num_workers``. The flat map and the batching run after ``mp_prefetch``, so
a worker never decides batch composition.

With ``data.cache_decoded_videos = n > 0`` every worker process (the main
process when ``num_workers == 0``) keeps the decoded frames of its ``n`` most
recently used videos (:class:`~mvm_jax.data.decode.VideoCache`): for small
data sets, a video is then decoded once per worker instead of once per
record visit. Batches are bit-identical with and without the cache.

A record whose file cannot be decoded yields zero samples (a
:class:`~mvm_jax.data.decode.VideoDecodeError` is caught in the worker); the
main process logs its path and counts it in ``info.skipped`` (``.count``:
skips so far, ``.paths``: the bad files). A data set where most files fail
stops with :class:`BadDataError` naming some of them (``data.max_bad_fraction``
of at least 8 distinct records tried), and one where every file fails stops
after a shard's worth of failures in a row.

Batches (host-local numpy)::

  {'video': uint8 [b, T, S, S, 3]    raw pixels: the jitted steps normalise them with data.mean /
                                     data.std on the device (mvm_jax.pixels.normalize),
   'label': int32 [b],
   'index': int32 [b]}               record index in the split's source
"""

from __future__ import annotations

from typing import Any

import grain
import grain.experimental
import numpy as np

from mvm_jax.data import decode
from mvm_jax.data import sampling
from mvm_jax.data import sources
from mvm_jax.data.loader_base import (
  LoaderInfo,
  ShortVideoLog,
  SkipLog,
  grain_dataset,
  host_batch_size,
)

# The config.data section, its defaults and validation live in a module with no Grain, PyAV or
# TensorFlow import (the benchmark path reads them): mvm_jax.data.settings.
from mvm_jax.data.settings import SOURCES, fail, validate_data_config


def build_video_source(data_config, split: str) -> sources.VideoSource:
  """The video source named by ``data_config.source`` for ``split`` (any source but 'tokens').

  Raises:
    sources.SourceError (a ValueError): a setting is wrong; names the key.
  """
  dc = data_config
  class_names_file = dc.class_names_file or None
  if dc.source == 'builtin':
    return sources.builtin_source(split)
  if dc.source == 'csv':
    return sources.list_source(dc.path, split, root=dc.root or None, class_names_file=class_names_file)
  if dc.source == 'folder':
    return sources.folder_source(dc.path, split, class_names_file=class_names_file)
  if dc.source == 'tfds':
    from mvm_jax.data import tfds_video  # here: importing tensorflow_datasets takes ~1 s

    return tfds_video.TfdsVideoSource(
      dc.tfds_name,
      split,
      data_dir=dc.tfds_data_dir or None,
      video_key=dc.tfds_video_key,
      label_key=dc.tfds_label_key or None,
      class_names_file=class_names_file,
    )
  fail('source', f'unknown source {data_config.source!r}; known: {list(SOURCES)}')


def make_sampler(data_config, *, train: bool) -> sampling.Sampler:
  """The per-record sampler named by ``data_config.sampling`` (k = 1 when not training).

  Its ``sample_shape`` is the shape of one sample's video; multi-view testing
  (``eval_*_views``) applies when not training.
  """
  dc = data_config
  short_side = dc.decode_short_side
  if short_side == -1:
    short_side = 2 * dc.crop_size
  common = dict(
    crop_size=dc.crop_size,
    scale=tuple(dc.scale),
    aspect_ratio=tuple(dc.aspect_ratio),
    flip=bool(dc.hflip),
    mean=tuple(dc.mean),
    std=tuple(dc.std),
    num_samples=dc.repeated_sampling if train else 1,
    train=train,
    decode_short_side=short_side or None,
    target_fps=float(dc.target_fps),
    randaugment_ops=dc.randaugment_ops,
    randaugment_magnitude=float(dc.randaugment_magnitude),
    randaugment_magnitude_std=float(dc.randaugment_magnitude_std),
    short_videos=dc.get('short_videos', 'loop'),
    color_jitter=float(dc.get('color_jitter', 0.0)),
    grayscale_prob=float(dc.get('grayscale_prob', 0.0)),
  )
  views = {} if train else dict(temporal_views=dc.eval_temporal_views, spatial_views=dc.eval_spatial_views)
  if dc.sampling == 'clip':
    return sampling.ClipSampler(num_frames=dc.num_frames, sampling_rate=dc.sampling_rate, **views, **common)
  if dc.sampling == 'segment':
    return sampling.SegmentSampler(num_frames=dc.num_frames, **views, **common)
  if dc.sampling == 'clip_pair':
    return sampling.ClipPairSampler(
      num_frames=dc.num_frames,
      sampling_rate=dc.sampling_rate,
      max_distance_s=float(dc.clip_pair_max_distance_s),
      min_distance_s=float(dc.clip_pair_min_distance_s),
      **common,
    )
  if dc.sampling == 'frame_pair':
    return sampling.FramePairSampler(
      mode=dc.frame_pair_mode, num_segments=dc.frame_pair_segments, gap=dc.frame_pair_gap, **common
    )
  fail('sampling', f'unknown sampling {dc.sampling!r}; known: {list(sampling.SAMPLERS)}')


class _SampleRecord:
  """Worker side: record index -> k samples (or zero samples on a bad file).

  With ``cache_size > 0`` frames are read through a
  :class:`~mvm_jax.data.decode.VideoCache` of that many videos; each worker
  process unpickles its own (empty) copy.
  """

  def __init__(self, source: sources.VideoSource, sampler: sampling.Sampler, cache_size: int = 0):
    self._source = source
    self._sampler = sampler
    self._cache = decode.VideoCache(cache_size) if cache_size > 0 else None

  def __call__(self, index, rng: np.random.Generator) -> dict[str, Any]:
    index = int(index)
    record = self._source[index]
    try:
      video, short = self._sampler.sample(record, rng, cache=self._cache)
    except sampling.ShortVideoError as e:  # data.short_videos='skip': no sample
      shape = (0, *self._sampler.sample_shape)
      return {
        'video': np.zeros(shape, np.uint8),
        'label': np.zeros((0,), np.int32),
        'index': np.zeros((0,), np.int32),
        'short': (e.path, e.length, e.span),
        'record': index,
      }
    except decode.VideoDecodeError as e:
      s = self._sampler
      return {
        'video': np.zeros((0, s.num_frames, s.crop_size, s.crop_size, 3), np.uint8),
        'label': np.zeros((0,), np.int32),
        'index': np.zeros((0,), np.int32),
        'error': (e.path, str(e)),
        'record': index,
      }
    k = video.shape[0]
    out = {
      'video': video,
      'label': np.full((k,), record.label, np.int32),
      'index': np.full((k,), index, np.int32),
    }
    if short is not None:
      out['short'] = (str(record.path), short, self._sampler.clip_span)
    return out


class BadDataError(RuntimeError):
  """Too many of a loader's videos cannot be decoded (``data.max_bad_fraction``)."""


# The bad-file fraction is judged once this many distinct records were tried.
MIN_RECORDS_FOR_BAD_FRACTION = 8


class _Unstack(grain.experimental.FlatMapTransform):
  """Main-process side: {'video': [k, ...], ...} -> k per-sample dicts.

  Also stops a mostly unreadable data set: over the distinct records of the
  shard tried so far (at least MIN_RECORDS_FOR_BAD_FRACTION; a record counts
  as its first attempt), once more than ``max_bad_fraction`` failed, raises
  :class:`BadDataError`. Checked until every record was tried once.
  """

  def __init__(
    self,
    max_fan_out: int,
    skipped: SkipLog,
    num_records: int,
    max_bad_fraction: float = 1.0,
    short: ShortVideoLog | None = None,
  ):
    self.max_fan_out = max_fan_out
    self._skipped = skipped
    self._short = short if short is not None else ShortVideoLog()
    self._num_records = num_records
    self._consecutive_failures = 0
    self._max_bad_fraction = max_bad_fraction
    self._tried: set[int] | None = set()  # None: all tried, check done
    self._bad = 0
    self._last_error = ''

  def _count_record(self, index: int, error: str | None) -> None:
    if self._tried is None or index in self._tried:
      return
    self._tried.add(index)
    if error is not None:
      self._bad += 1
      self._last_error = error
    tried = len(self._tried)
    if tried >= MIN_RECORDS_FOR_BAD_FRACTION and self._bad > self._max_bad_fraction * tried:
      paths = sorted(self._skipped.paths)
      more = f' (and {len(paths) - 3} more)' if len(paths) > 3 else ''
      raise BadDataError(
        f'{self._bad} of the {tried} records tried so far ({self._bad / tried:.0%}) failed to decode, '
        f'more than config.data.max_bad_fraction={self._max_bad_fraction}. Bad files: '
        f'{", ".join(paths[:3])}{more}. Last error: {self._last_error}. Check the data set, or raise '
        f'data.max_bad_fraction (1.0: never stop) to train on the readable videos.'
      )
    if tried == self._num_records:
      self._tried = None

  def flat_map(self, element):
    if 'short' in element:
      self._short.add(*element['short'])
      if 'record' in element:  # left out (data.short_videos='skip'): tried, not bad
        self._count_record(int(element['record']), None)
        self._consecutive_failures += 1
        if self._consecutive_failures > 2 * self._num_records:
          raise RuntimeError(
            f'{self._consecutive_failures} videos in a row were left out as shorter than the clip span '
            f"(data.short_videos='skip'; the shard has {self._num_records} records), last: "
            f'{element["short"][0]}; lower data.num_frames or data.sampling_rate, or use loop / pad'
          )
        return []
    if 'error' in element:
      self._skipped.add(*element['error'])
      self._count_record(int(element['record']), element['error'][1])
      self._consecutive_failures += 1
      # A good record comes once per epoch (a shuffled pass), so between two of
      # its visits lie at most 2 * num_records - 2 others.
      if self._consecutive_failures > 2 * self._num_records:
        # An endless stream of bad files would otherwise hang silently.
        raise RuntimeError(
          f'{self._consecutive_failures} videos in a row failed to decode '
          f'(the shard has {self._num_records} records); last: '
          f'{element["error"][1]}'
        )
      return []
    self._consecutive_failures = 0
    if element['index'].shape[0]:
      self._count_record(int(element['index'][0]), None)
    return [
      {'video': element['video'][i], 'label': element['label'][i], 'index': element['index'][i]}
      for i in range(element['video'].shape[0])
    ]


def make_video_loader(
  data_config,
  *,
  split: str,
  global_batch_size: int,
  seed: int,
  shard_index: int = 0,
  shard_count: int = 1,
  train: bool = True,
  source: sources.VideoSource | None = None,
) -> tuple[grain.IterDataset, LoaderInfo]:
  """Builds the host-local input pipeline of a video source (what
  :func:`mvm_jax.data.loader.make_loader` calls for every source but 'tokens').

  Args:
    data_config: the ``config.data`` ConfigDict (see default_data_config).
    split: split of the source ('train' / 'test' for builtin).
    global_batch_size: samples per step over all hosts; this host yields
      ``global_batch_size // shard_count``.
    seed: data seed in [0, 2**32); same seed -> same batches, whatever
      ``num_workers``.
    shard_index / shard_count: this host's shard (e.g. jax.process_index() /
      jax.process_count()); shards read disjoint records.
    train: True: shuffled, reshuffled each epoch, endless, random crops,
      ``repeated_sampling`` samples per video, last partial batch dropped.
      False: one pass in record order, centre clip and crop, 1 sample per
      video, last batch may be smaller.
    source: read this source instead of the one ``data_config.source`` names.

  Returns:
    (dataset, info). ``iter(dataset)`` is a ``grain.DatasetIterator`` yielding
    ``{'video': uint8 [b, T, S, S, 3], 'label': i32 [b], 'index': i32 [b]}``;
    its ``get_state()`` / ``set_state()`` (JSON-serializable dicts; orbax:
    ``grain.checkpoint.CheckpointSave/CheckpointRestore``) checkpoint and
    resume it exactly, for an iterator built with the same arguments and
    data config (the state's layout depends on ``num_workers``). Close
    iterators with ``it.close()`` to stop worker processes promptly. With
    ``num_workers > 0`` the main module must be import-safe (``if __name__ ==
    '__main__':``) because workers are spawned.
  """
  validate_data_config(data_config)
  if data_config.source == 'tokens':
    fail(
      'source', "make_video_loader reads video sources, not 'tokens' (mvm_jax.data.make_loader reads both)"
    )
  batch_size = host_batch_size(global_batch_size, shard_count, seed)
  if source is None:
    source = build_video_source(data_config, split)
  sampler = make_sampler(data_config, train=train)
  k = sampler.num_samples
  skipped, short = SkipLog(), ShortVideoLog(sampler.short_videos)
  ds, shard_records = grain_dataset(
    data_config,
    source,
    _SampleRecord(source, sampler, data_config.cache_decoded_videos),
    lambda shard_records: _Unstack(k, skipped, shard_records, data_config.max_bad_fraction, short),
    batch_size=batch_size,
    seed=seed,
    shard_index=shard_index,
    shard_count=shard_count,
    train=train,
  )
  info = LoaderInfo(
    num_records=len(source),
    shard_records=shard_records,
    num_classes=source.num_classes,
    class_names=tuple(source.class_names),
    repeated_sampling=k,
    samples_per_epoch=len(source),
    batch_size=batch_size,
    global_batch_size=global_batch_size,
    skipped=skipped,
    short=short,
  )
  return ds, info


def release_shared_memory() -> None:
  """Unlink now the shared memory of worker batches no longer in use.

  Grain unlinks a batch's shared memory when its array is collected, in a
  background thread; arrays caught in reference cycles, or deletions still
  queued at exit, are left over (Python's resource tracker then warns of
  "leaked shared_memory objects"). Call after closing the iterators, at the end
  of a program: collects them and waits for the deletions; later ones are
  synchronous until a new multi-worker iterator starts.
  """
  import gc

  gc.collect()
  try:
    from grain._src.python.ipc import shared_memory_array

    array = shared_memory_array.SharedMemoryArray
    with array._lock:
      pool = array._del_thread_pool
      array._del_thread_pool = array._outstanding_del_requests = None
  except (ImportError, AttributeError):  # another grain: its own clean-up applies
    return
  if pool is not None:
    pool.close()
    pool.join()
