"""Videos stored in tensorflow-datasets (array_record): read and write.

Reading (``config.data.source = 'tfds'``): :class:`TfdsVideoSource` serves
the examples of a prepared tfds dataset whose video feature holds *encoded*
video files (bytes, e.g. an mp4 file's content). It reads through
``tfds.builder(name, data_dir).as_data_source(split)``: random access to
array_record files in plain numpy/bytes, no TensorFlow ops, so it runs in
Grain worker processes. ``source[i]`` reads example i (in the worker) and
returns a record whose ``path`` is a :class:`~mvm_jax.data.decode.VideoBlob`
named ``tfds://<name>/<split>/<i>`` holding the bytes; the decode functions
open it from memory.

Writing: :func:`pack_videos` stores the records of list/folder sources
(:mod:`mvm_jax.data.sources`) as such a dataset: per video the encoded bytes,
the label (a ``ClassLabel`` with the sources' class names), the original path
and the frame count, so large corpora are read from a few big files instead
of millions of small ones. Command line: ``python -m mvm_jax.tools.pack_videos``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from mvm_jax import progress as progress_lib
from mvm_jax.data import decode, sources
from mvm_jax.data.sources import SourceError, VideoRecord, VideoSource

# Features of a packed dataset (pack_videos).
VIDEO_KEY = 'video'  # encoded video file (bytes)
LABEL_KEY = 'label'  # ClassLabel
PATH_KEY = 'path'  # the original file
NUM_FRAMES_KEY = 'num_frames'  # frame count from the container metadata
PACK_VERSION = '1.0.0'


def _is_bytes_feature(feature) -> bool:
  return isinstance(feature, tfds.features.Tensor) and feature.shape == () and feature.np_dtype == np.object_


def load_builder(name: str, data_dir: str | None):
  """The prepared tfds builder of dataset ``name`` in ``data_dir`` (None: the tfds default).

  Raises:
    SourceError: (key ``tfds_name``) no such dataset there (naming the ones there), it cannot be
      loaded, or it is not prepared.
  """
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    # tfds's own message lists its whole catalog: say what data_dir holds instead.
    where = data_dir or os.path.expanduser(tfds.core.constants.DATA_DIR)
    unset = '' if data_dir else ' (data.tfds_data_dir unset: the tfds default)'
    if os.path.isdir(where):
      found = f'datasets there: {sorted(d for d in os.listdir(where) if not d.startswith("."))}'
    else:
      found = 'that directory does not exist'
    raise SourceError('tfds_name', f'no tfds dataset {name!r} in {where!r}{unset}; {found}') from e
  except Exception as e:  # tfds raises many kinds for a bad name or directory.
    raise SourceError('tfds_name', f'cannot load tfds dataset {name!r} from {data_dir!r}: {e}') from e
  if not builder.is_prepared():
    raise SourceError(
      'tfds_name',
      f'tfds dataset {name!r} is not prepared in {builder.data_dir!r}; prepare it first '
      '(tfds build --file_format=array_record, or python -m mvm_jax.tools.pack_videos)',
    )
  return builder


class TfdsVideoSource(VideoSource):
  """The examples of one split of a tfds dataset of encoded videos.

  Records are made on demand: ``source[i]`` reads example ``i`` (the video's
  bytes included) and returns ``VideoRecord(path=VideoBlob('tfds://name/split/i'),
  label, frame_stop=num_frames)``. The source pickles small (the tfds data
  source re-opens its files where it is unpickled), and a record's blob, if
  pickled, drops the bytes and re-reads them from this source.
  """

  def __init__(
    self,
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    video_key: str = VIDEO_KEY,
    label_key: str | None = LABEL_KEY,
    class_names_file: str | None = None,
  ):
    """Opens the split.

    Args:
      name: tfds dataset name (``config.data.tfds_name``), optionally with
        config and version (``'name/config:1.0.0'``).
      split: split, tfds slicing allowed (``'train[:10%]'``).
      data_dir: tfds data directory (``data.tfds_data_dir``); None: tfds's default.
      video_key: feature holding the encoded video bytes (``data.tfds_video_key``).
      label_key: feature holding the class id (``data.tfds_label_key``);
        None or '': unlabeled (every label 0).
      class_names_file: class names (``data.class_names_file``); needed when
        the label feature is a plain integer rather than a ``ClassLabel``.

    Raises:
      SourceError: unknown or unprepared dataset, unknown split, a missing
        feature or one of the wrong kind.
    """
    builder = load_builder(name, data_dir)
    features = builder.info.features
    known = sorted(features.keys())
    if video_key not in features:
      raise SourceError(
        'tfds_video_key', f'tfds dataset {name!r} has no feature {video_key!r}; features: {known}'
      )
    video_feature = features[video_key]
    if not _is_bytes_feature(video_feature):
      raise SourceError(
        'tfds_video_key',
        f'feature {video_key!r} of tfds dataset {name!r} is {video_feature!r}; this source reads encoded '
        'video files (a scalar bytes feature, as written by python -m mvm_jax.tools.pack_videos), not '
        'decoded frame sequences',
      )
    classes = sources.read_class_names(class_names_file) if class_names_file else None
    label_of_id = None
    if not label_key:
      class_names = sources.UNLABELED
    elif label_key not in features:
      raise SourceError(
        'tfds_label_key', f'tfds dataset {name!r} has no feature {label_key!r}; features: {known}'
      )
    elif classes is not None:
      class_names, label_of_id = classes.names, classes.label_of_id
    elif isinstance(features[label_key], tfds.features.ClassLabel):
      class_names = tuple(features[label_key].names)
    else:
      raise SourceError(
        'tfds_label_key',
        f'feature {label_key!r} of tfds dataset {name!r} is {features[label_key]!r}, not a ClassLabel: '
        'give the class names in data.class_names_file',
      )
    try:
      data_source = builder.as_data_source(split)
    except Exception as e:  # unknown split, other file format, ...
      raise SourceError(
        'tfds_name',
        f'cannot read split {split!r} of tfds dataset {name!r} (splits: {sorted(builder.info.splits)}, '
        f'file format: {builder.info.file_format}): {e}',
      ) from e
    if len(data_source) == 0:
      raise SourceError('tfds_name', f'split {split!r} of tfds dataset {name!r} has no examples')
    self._data_source = data_source
    self._tfds_name = name
    self._split = split
    self._video_key = video_key
    self._label_key = label_key or None
    self._label_of_id = label_of_id
    self._has_num_frames = NUM_FRAMES_KEY in features and features[NUM_FRAMES_KEY].shape == ()
    self._class_names = tuple(class_names)
    self.name = f'tfds:{name}/{split}'

  def __len__(self) -> int:
    return len(self._data_source)

  def read_video(self, index: int) -> bytes:
    """The encoded video of example ``index``."""
    return self._data_source[self.position(index)][self._video_key]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    index = self.position(index)
    example = self._data_source[index]
    blob = decode.VideoBlob(
      f'tfds://{self._tfds_name}/{self._split}/{index}',
      functools.partial(TfdsVideoSource.read_video, self, index),
      data=example[self._video_key],
    )
    label = 0
    if self._label_key:
      label = int(example[self._label_key])
      if self._label_of_id is not None:
        if label not in self._label_of_id:
          raise ValueError(f'{blob}: label {label} is not a class id of data.class_names_file')
        label = self._label_of_id[label]
    frame_stop = int(example[NUM_FRAMES_KEY]) if self._has_num_frames else 0
    return VideoRecord(path=blob, label=label, frame_stop=frame_stop if frame_stop > 0 else None)


# ---------------------------------------------------------------------------
# Packing list/folder sources into an array_record tfds dataset.


class SplitsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder named per instance (like tfds's AdhocBuilder) whose splits come
  from `split_examples` {split: () -> iterator of (key, features)}; subclasses
  define `VERSION` and `_info`."""

  # tfds 4.9.10 resolves code_path with importlib_resources, which it does
  # not install; nothing is read from the code's folder here anyway.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def __init__(self, *, name: str, split_examples=None, **kwargs):
    self.name = name
    self._split_examples = split_examples or {}
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: make() for split, make in self._split_examples.items()}

  def _generate_examples(self):
    raise NotImplementedError


class _PackedVideos(SplitsBuilder, skip_registration=True):
  """A tfds builder for packed videos."""

  VERSION = tfds.core.Version(PACK_VERSION)

  def __init__(self, *, class_names=(), **kwargs):
    self._class_names = tuple(class_names)
    super().__init__(**kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      description='Encoded videos packed by mvm_jax.tools.pack_videos.',
      features=tfds.features.FeaturesDict(
        {
          VIDEO_KEY: tfds.features.Tensor(shape=(), dtype=np.object_),
          LABEL_KEY: tfds.features.ClassLabel(names=self._class_names),
          PATH_KEY: tfds.features.Text(),
          NUM_FRAMES_KEY: tfds.features.Scalar(dtype=np.int64),
        }
      ),
      disable_shuffling=True,  # example i of a split is the i-th video read.
    )


class PackProgress(progress_lib.SplitProgress):
  """Progress of :func:`pack_videos` over all splits (updated after each video): the videos read
  (packed or skipped; rate and ETA: reading, writing the files follows); its line adds the bytes
  read and the videos skipped."""

  def __init__(self, total: int):
    super().__init__('packing', total)
    self.bytes_read = 0

  def details(self) -> list[str]:
    mib = self.bytes_read / 2**20
    return [f'{mib:.1f} MiB ({mib / max(self.elapsed, 1e-9):.1f} MiB/s)', f'{self.skipped} skipped']


def _read_video(record: VideoRecord) -> tuple[bytes, int] | str:
  """(bytes, frame count) of a record's file, or why it cannot be packed."""
  try:
    if isinstance(record.path, decode.VideoBlob):
      data = record.path.read()
    else:
      with open(record.path, 'rb') as f:
        data = f.read()
    info = decode.probe_video(decode.VideoBlob(record.path, None, data=data))
  except OSError as e:
    return f'cannot read {record.path!r}: {e}'
  except decode.VideoDecodeError as e:
    return str(e)
  return data, info.num_frames


def ordered_map(fn, items, num_threads: int) -> Iterator:
  """``map(fn, items)`` on a thread pool, in order, at most 2 x num_threads ahead."""
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * num_threads:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def common_class_names(split_sources: Mapping[str, VideoSource]) -> tuple[str, ...]:
  """The label space all splits agree on (the longest, others must prefix it)."""
  longest = max((s.class_names for s in split_sources.values()), key=len)
  for split, s in split_sources.items():
    if tuple(s.class_names) != tuple(longest[: s.num_classes]):
      raise ValueError(
        f'splits disagree on the class names ({split!r}: {s.class_names[:5]}... vs '
        f'{longest[:5]}...); give a class names file'
      )
  return tuple(longest)


def pack_videos(
  split_sources: Mapping[str, VideoSource],
  *,
  name: str,
  data_dir: str,
  overwrite: bool = False,
  num_threads: int = 8,
  progress: Callable[[PackProgress], None] | None = None,
) -> PackProgress:
  """Writes the videos of ``split_sources`` as the tfds dataset ``name``.

  The dataset lands in ``data_dir/name/1.0.0/`` as array_record files (tfds
  shards by size), one example per readable video in source order: the
  file's bytes, its label, its path and its frame count. Videos that cannot
  be read or probed are skipped (listed in ``skipped_paths``). Read it back
  with ``TfdsVideoSource(name, split, data_dir=data_dir)`` or the config
  ``data.source='tfds', data.tfds_name=name, data.tfds_data_dir=data_dir``.

  Args:
    split_sources: split name -> source (e.g. ``sources.list_source(...)``).
    name: dataset name (a tfds name: lowercase letters, digits, ``_``).
    data_dir: tfds data directory to write into.
    overwrite: replace an existing dataset of that name and version.
    num_threads: threads reading and probing files ahead of the writer.
    progress: called after each video with the running :class:`PackProgress`.

  Returns:
    The final progress (counts, bytes, time, skipped paths).

  Raises:
    FileExistsError: the dataset exists and ``overwrite`` is False.
    ValueError: no splits, or splits with different class names.
  """
  if not split_sources:
    raise ValueError('no splits to pack')
  class_names = common_class_names(split_sources)
  version_dir = os.path.join(data_dir, name, PACK_VERSION)
  if os.path.exists(version_dir):
    if not overwrite:
      raise FileExistsError(f'tfds dataset {name!r} already exists in {version_dir!r}')
    shutil.rmtree(version_dir)
  state = PackProgress(total=sum(len(s) for s in split_sources.values()))

  def examples(split: str, source: VideoSource):
    state.split = split
    for index, (record, result) in enumerate(
      zip(source, ordered_map(_read_video, source, num_threads), strict=True)
    ):
      state.update()
      if isinstance(result, str):
        state.skipped += 1
        state.skipped_paths.append(str(record.path))
      else:
        data, num_frames = result
        state.bytes_read += len(data)
        yield (
          index,
          {
            VIDEO_KEY: data,
            LABEL_KEY: record.label,
            PATH_KEY: str(record.path),
            NUM_FRAMES_KEY: num_frames,
          },
        )
      if progress is not None:
        progress(state)

  builder = _PackedVideos(
    name=name,
    class_names=class_names,
    split_examples={s: functools.partial(examples, s, src) for s, src in split_sources.items()},
    data_dir=data_dir,
    file_format='array_record',
  )
  with tempfile.TemporaryDirectory(prefix='pack_videos_') as tmp:
    builder.download_and_prepare(download_dir=tmp)
  return state
