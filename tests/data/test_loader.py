"""The one data entry (mvm_jax/data/loader.py): make_loader and build_source for video and token sources.

Each gives the batches of the pipeline it dispatches to, called directly with this process's shard
(what the train and eval call sites passed before).
"""

import jax
import numpy as np
import pytest

from mvm_jax.data import (
  Record,
  Source,
  TokenSource,
  VideoSource,
  build_source,
  default_data_config,
  make_loader,
  pipeline,
  sources,
  tokens,
)
from tests.data.test_tokens import Tokenize, extract


def small_config(**overrides):
  dc = default_data_config()
  dc.update(num_frames=4, sampling_rate=2, crop_size=32, repeated_sampling=2, num_workers=0, prefetch=1)
  dc.update(overrides)
  return dc


def take(ds, n=None):
  it = iter(ds)
  try:
    return list(it) if n is None else [next(it) for _ in range(n)]
  finally:
    it.close()


def assert_same(a, b):
  assert len(a) == len(b) > 0
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def this_shard():
  return dict(shard_index=jax.process_index(), shard_count=jax.process_count())


@pytest.mark.parametrize('train', [True, False])
def test_video_entry_gives_the_video_pipeline_batches(train):
  dc = small_config()
  args = dict(split='train', global_batch_size=4, seed=3, train=train)
  ds, info = make_loader(dc, **args)
  direct, direct_info = pipeline.make_video_loader(dc, **args, **this_shard())
  n = 2 if train else None
  assert_same(take(ds, n), take(direct, n))
  assert (info.num_records, info.shard_records, info.batch_size) == (8, 8, 4)
  assert info.repeated_sampling == direct_info.repeated_sampling == (2 if train else 1)


def test_video_entry_reads_the_shard_it_is_given():
  dc = small_config()
  args = dict(split='train', global_batch_size=4, seed=0, shard_index=1, shard_count=2)
  ds, info = make_loader(dc, **args)
  assert info.shard_records == 4 and info.batch_size == 2
  assert_same(take(ds, 2), take(pipeline.make_video_loader(dc, **args)[0], 2))


def test_build_source_and_the_video_loader_name_what_they_read():
  source = build_source(small_config(), 'test')
  assert isinstance(source, VideoSource) and isinstance(source, Source) and source.name == 'builtin:test'
  with pytest.raises(ValueError, match='config.data.source'):
    pipeline.make_video_loader(
      small_config(source='tokens', tfds_name='t'), split='train', global_batch_size=2, seed=0
    )


@pytest.fixture(scope='module')
def token_set(tmp_path_factory):
  """Three built-in videos' tokens in a tfds dataset 'tiny_tokens' (as tests/data/test_tokens.py makes
  them), and a data config that reads them."""
  root = tmp_path_factory.mktemp('tokens')
  train = sources.builtin_source('train')
  names = sources.builtin_class_names()
  split_sources = {'train': VideoSource([train[0], train[1], train[2]], names, name='tiny:train')}
  extract((root, split_sources), 'tiny_tokens', Tokenize())
  dc = default_data_config()
  dc.update(
    source='tokens',
    tfds_name='tiny_tokens',
    tfds_data_dir=str(root / 'tfds'),
    crop_size=32,
    num_frames=3,
    sampling_rate=2,
    sampling='clip',
    target_fps=2.0,
    repeated_sampling=2,
    num_workers=0,
    prefetch=1,
  )
  return dc


def test_token_source_is_a_source(token_set):
  source = build_source(token_set, 'train')
  assert isinstance(source, TokenSource) and isinstance(source, Source)
  assert len(source) == 3 and source.name == 'tokens:tiny_tokens/train'
  assert source.num_classes == len(source.class_names) == 8
  records = list(source)
  assert len(records) == 3 and all(isinstance(r, Record) for r in records)
  assert [r.label for r in records] == [0, 1, 2] and source[-1].path == records[2].path
  with pytest.raises(IndexError, match='index 3 out of range'):
    source[3]


@pytest.mark.parametrize('train', [True, False])
def test_token_entry_gives_the_token_pipeline_batches(token_set, train):
  args = dict(split='train', global_batch_size=2, seed=5, train=train)
  ds, info = make_loader(token_set, **args)
  direct, _ = tokens.make_token_loader(token_set, **args, **this_shard())
  n = 3 if train else None
  batches = take(ds, n)
  assert_same(batches, take(direct, n))
  assert batches[0]['tokens'].shape == (2, 3, 4, 4) and info.num_records == 3
  # A source given to the entry is read instead of the one the config names.
  source = build_source(token_set, 'train')
  assert_same(take(make_loader(token_set, **args, source=source)[0], n), batches)
