"""What every Grain loader shares: the dataset graph, the host batch size and the LoaderInfo.

The pixel loader (:func:`mvm_jax.data.pipeline.make_video_loader`) and the token loader
(:func:`mvm_jax.data.tokens.make_token_loader`) differ in what a worker does with a
record; both build the graph of :func:`grain_dataset` (drawn in the docstring of
:mod:`mvm_jax.data.pipeline`) and return a :class:`LoaderInfo`, whose skip and
short-video logs (:class:`SkipLog`, :class:`ShortVideoLog`) fill while iterating.
"""

from __future__ import annotations

import dataclasses
import threading

from absl import flags
from absl import logging
import grain
import grain.experimental
import numpy as np

from mvm_jax.data.source import Source


class SkipLog:
  """Counts records skipped because their file could not be decoded.

  Lives in the main process (the flat map runs there), so ``count`` covers
  every worker. Not part of the iterator state: a restored run counts anew.

  Attributes:
    count: skips so far, this host (a bad record is counted on every visit,
      e.g. once per epoch); log it as ``info.skipped.count``.
    paths: bad file -> skips.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.count = 0
    self.paths: dict[str, int] = {}

  def add(self, path: str, message: str) -> None:
    with self._lock:
      self.count += 1
      self.paths[path] = self.paths.get(path, 0) + 1
    logging.warning('Skipping unreadable video (%d skipped so far): %s', self.count, message)

  def __repr__(self) -> str:
    return f'SkipLog(count={self.count}, paths={sorted(self.paths)})'


_SHORT_VIDEOS_LOGGED = False  # the once-per-run message (per process); reset_short_video_warning
_SHORT_VIDEO_EFFECT = {
  'loop': 'loop within them',
  'pad': 'start at their first frame and repeat their last',
  'skip': 'are left out',
}


def reset_short_video_warning() -> None:
  """The next short video any :class:`ShortVideoLog` of this process sees logs the once-per-run
  warning again (a new run in the same process: a notebook, a test)."""
  global _SHORT_VIDEOS_LOGGED
  _SHORT_VIDEOS_LOGGED = False


class ShortVideoLog:
  """Counts the distinct videos shorter than the clip span (``data.short_videos``).

  Main process, as :class:`SkipLog`. The first one of the run is logged as a
  warning, once per process; every new one at debug level.

  Attributes:
    mode: ``data.short_videos``.
    paths: short video -> its length (in clip positions).
  """

  def __init__(self, mode: str = 'loop'):
    self._lock = threading.Lock()
    self.mode = mode
    self.paths: dict[str, int] = {}

  @property
  def count(self) -> int:
    return len(self.paths)

  def add(self, path: str, length: int, span: int) -> None:
    global _SHORT_VIDEOS_LOGGED
    with self._lock:
      if path in self.paths:
        return
      self.paths[path] = length
      first = not _SHORT_VIDEOS_LOGGED
      _SHORT_VIDEOS_LOGGED = True
    logging.debug('Short video (%d frames, clip span %d): %s', length, span, path)
    if first:
      logging.warning(
        'Videos shorter than the clip span of %d frames ((num_frames - 1) x sampling_rate + 1), e.g. %s '
        '(%d frames): their clips %s (data.short_videos=%r; loop, pad or skip). Counted as '
        'data/short_videos; logged once per run, each video at debug level (--verbosity=1).',
        span,
        path,
        length,
        _SHORT_VIDEO_EFFECT[self.mode],
        self.mode,
      )

  def __repr__(self) -> str:
    return f'ShortVideoLog(mode={self.mode!r}, count={self.count})'


@dataclasses.dataclass(frozen=True)
class LoaderInfo:
  """What a caller needs to know about a loader.

  Attributes:
    num_records: records in the split (all shards).
    shard_records: records this shard reads per epoch.
    num_classes / class_names: label space of the source.
    repeated_sampling: k, samples per decoded record (1 for eval).
    samples_per_epoch: samples in one epoch = num_records (all shards). Epochs are MAE-ST's
      "effective epochs" (each raw video sampled once, on average): repeated sampling changes the
      order of the samples, not their number, so one pass over the records is k epochs.
    batch_size: host-local batch size b.
    global_batch_size: b * shard_count.
    skipped: records skipped for unreadable files, filled while iterating.
    short: videos shorter than the clip span (data.short_videos), filled while iterating.
  """

  num_records: int
  shard_records: int
  num_classes: int
  class_names: tuple[str, ...]
  repeated_sampling: int
  samples_per_epoch: int
  batch_size: int
  global_batch_size: int
  skipped: SkipLog
  short: ShortVideoLog = dataclasses.field(default_factory=ShortVideoLog)


def host_batch_size(global_batch_size: int, shard_count: int, seed: int) -> int:
  """This host's batch b = global / shard_count; checks the loader arguments."""
  if global_batch_size < 1 or global_batch_size % shard_count:
    raise ValueError(
      f'batch_size={global_batch_size} must be a positive multiple of the '
      f'number of data shards (shard_count={shard_count})'
    )
  if not 0 <= seed < 2**32:
    raise ValueError(f'seed must be in [0, 2**32), got {seed}')
  return global_batch_size // shard_count


def grain_dataset(
  data_config,
  source: Source,
  sample_record,
  make_unstack,
  *,
  batch_size: int,
  seed: int,
  shard_index: int,
  shard_count: int,
  train: bool,
) -> tuple[grain.IterDataset, int]:
  """The Grain graph of the :mod:`mvm_jax.data.pipeline` docstring, shared by every loader.

  ``sample_record(index, rng) -> {'...': [k, ...]}`` runs in the workers;
  ``make_unstack(shard_records)`` gives the main-process flat map that turns
  its k samples into k elements. Returns (dataset of host batches, records
  in this shard).
  """
  num_records = len(source)
  ds = grain.MapDataset.range(num_records)
  if shard_count > 1:
    if train:  # equal shards, so every host has the same epoch.
      ds = ds[: num_records - num_records % shard_count]
    ds = ds[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f'{source!r} has {num_records} records: too few for {shard_count} shards')
  shard_records = len(ds)
  # Fold the shard into the seed so hosts do not draw identical crops.
  shard_seed = int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])
  ds = ds.seed(shard_seed)
  if train:
    ds = ds.shuffle().repeat()  # repeat after shuffle: new order each epoch.
  ds = ds.random_map(sample_record)
  prefetch = data_config.prefetch
  # ReadOptions defaults (16 threads, 500 elements) would hold GBs of video.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch))
  if data_config.num_workers > 0:
    # Workers pass arrays through shared memory; keep labels/indices (tiny)
    # out of it: one shm segment per array costs more than copying them.
    ds = grain.experimental.WithOptionsIterDataset(
      ds, grain.experimental.DatasetOptions(min_shm_size=1 << 16)
    )
    # grain 0.2.18's mp_prefetch reads absl flags when an iterator starts;
    # outside an absl app (pytest, notebooks) they are unparsed: use defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(
        num_workers=data_config.num_workers, per_worker_buffer_size=max(1, prefetch)
      )
    )
  ds = grain.experimental.FlatMapIterDataset(ds, make_unstack(shard_records))
  ds = ds.batch(batch_size, drop_remainder=train)
  if prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return ds, shard_records
