"""Tests for mvm_jax.data.sampling and the temporal rules in transforms.py.

Mostly index-level (no decoding) or on synthetic frames (decode_frames
replaced by an array lookup); one loader-level test per new mode on the
built-in clips, with 32 px crops and 4 frames.
"""

import collections

import numpy as np
import pytest

from mvm_jax.data import (
  VideoCache,
  VideoRecord,
  VideoSource,
  builtin_source,
  decode,
  default_data_config,
  make_loader,
  make_sampler,
  sampling,
  transforms,
)
from mvm_jax.data.sampling import ClipPairSampler, ClipSampler, FramePairSampler, SegmentSampler
from mvm_jax.data.settings import validate_data_config
from mvm_jax.data.transforms import Timeline

MEAN = np.array((0.485, 0.456, 0.406), np.float32)
STD = np.array((0.229, 0.224, 0.225), np.float32)


def rng(seed=0):
  return np.random.default_rng(seed)


def synthetic_video(num_frames, height=32, width=40):
  """uint8 [T, H, W, 3]: R = frame index, G = 6 * column, B = 6 * row."""
  t, y, x = np.meshgrid(np.arange(num_frames), np.arange(height), np.arange(width), indexing='ij')
  return np.stack([t % 256, 6 * x, 6 * y], -1).astype(np.uint8)


def pixels(out):
  """uint8 samples (the loader leaves normalisation to the device) -> int64 pixel values."""
  assert out.dtype == np.uint8
  return out.astype(np.int64)


@pytest.fixture
def videos(monkeypatch):
  """path -> synthetic frames; decode_frames reads from this dict instead of files."""
  store = {}
  monkeypatch.setattr(
    decode, 'decode_frames', lambda path, idx, short_side=None: store[path][np.asarray(idx)]
  )
  return store


def all_samplers(**kw):
  """One sampler of each kind (T=4 where it applies)."""
  return [
    ClipSampler(num_frames=4, sampling_rate=3, **kw),
    SegmentSampler(num_frames=4, **kw),
    ClipPairSampler(num_frames=4, sampling_rate=3, **kw),
    FramePairSampler(**kw),
    FramePairSampler(mode='continuous', gap=5, **kw),
  ]


def small_config(**overrides):
  dc = default_data_config()
  dc.update(dict(num_frames=4, sampling_rate=2, crop_size=32, repeated_sampling=1, num_workers=0, prefetch=1))
  dc.update(overrides)
  return dc


# --- index level --------------------------------------------------------------


def test_segment_indices_one_per_segment():
  r = rng()
  for start, stop, n in [(0, 100, 8), (10, 37, 5), (0, 9, 9)]:
    bounds = transforms.segment_bounds(start, stop, n)
    assert bounds[0] == start and bounds[-1] == stop and np.all(np.diff(bounds) >= 1)
    for _ in range(20):
      idx = transforms.segment_indices(start, stop, n, r)
      assert np.all((bounds[:-1] <= idx) & (idx < bounds[1:]))
    np.testing.assert_array_equal(transforms.segment_indices(start, stop, n), (bounds[:-1] + bounds[1:]) // 2)
  np.testing.assert_array_equal(transforms.segment_indices(0, 100, 4), [12, 37, 62, 87])
  # The sampler: train random, eval centre; multi-view eval spreads inside segments.
  idx = SegmentSampler(num_frames=4, crop_size=8, train=False, temporal_views=2).timeline_indices(
    Timeline(0, 100), None
  )
  np.testing.assert_array_equal(idx, [[[6, 31, 56, 81], [18, 43, 68, 93]]])


def test_clip_pair_starts_respect_max_distance_in_seconds():
  r = rng()
  at_30fps = Timeline.resampled(0, 300, source_fps=30)
  pair = ClipPairSampler(num_frames=4, sampling_rate=2, max_distance_s=0.5, crop_size=8, num_samples=300)
  idx = pair.timeline_indices(at_30fps, r)  # [k, 2, T]
  assert idx.shape == (300, 2, 4) and np.all(np.diff(idx, axis=-1) == 2)
  assert idx.min() >= 0 and idx.max() < 300
  distance = np.abs(idx[:, 0, 0] - idx[:, 1, 0])
  assert distance.max() == 15 and np.mean(distance == 0) < 0.2  # 0.5 s at 30 fps
  # Unlimited: independent starts anywhere in the video.
  free = ClipPairSampler(num_frames=4, sampling_rate=2, crop_size=8, num_samples=300)
  assert np.abs(np.diff(free.timeline_indices(at_30fps, r)[:, :, 0], axis=1)).max() > 200
  # At a target rate the distance still counts seconds: 0.5 s at 10 fps = 5 positions = 15 frames.
  at_10fps = Timeline.resampled(0, 300, source_fps=30, target_fps=10)
  idx = pair.timeline_indices(at_10fps, r)
  distance = np.abs(idx[:, 0, 0] - idx[:, 1, 0])
  assert distance.max() == 15 and np.all(distance % 3 == 0) and np.all(np.diff(idx, axis=-1) == 6)
  # Eval: the clips as far apart as allowed, centred.
  evaluation = ClipPairSampler(num_frames=4, sampling_rate=2, max_distance_s=0.5, crop_size=8, train=False)
  np.testing.assert_array_equal(evaluation.timeline_indices(at_30fps, None)[0, :, 0], [139, 154])
  # Real file: the frame rate is probed (29.97 fps -> at most 29 frames in 1 s).
  record = builtin_source('train')[6]
  pair = ClipPairSampler(num_frames=4, sampling_rate=2, max_distance_s=1.0, crop_size=8, num_samples=400)
  idx = pair.frame_indices(record, r)
  assert np.abs(idx[:, 0, 0] - idx[:, 1, 0]).max() == 29


def test_clip_pair_starts_respect_min_distance_and_stay_uniform():
  r = rng()
  at_25fps = Timeline.resampled(0, 32, source_fps=25)
  # 8 frames at stride 2 (span 15) in 32 frames, at least 0.6 s = 15 frames apart: no shared frame.
  pair = ClipPairSampler(num_frames=8, sampling_rate=2, min_distance_s=0.6, crop_size=8, num_samples=400)
  idx = pair.timeline_indices(at_25fps, r)
  starts = idx[:, :, 0]
  assert np.abs(starts[:, 0] - starts[:, 1]).min() == 15 and idx.max() < 32
  assert all(not set(a) & set(b) for a, b in idx)
  assert {tuple(s) for s in starts.tolist()} == {
    (a, b) for a in range(18) for b in range(18) if abs(a - b) >= 15
  }
  # Between a min and a max every allowed ordered pair comes up about equally often.
  pairs = (transforms.clip_pair_indices(0, 30, 1, 1, r, max_distance=5, min_distance=3) for _ in range(15600))
  counts = collections.Counter((int(a), int(b)) for (a,), (b,) in pairs)
  allowed = {(a, b) for a in range(30) for b in range(30) if 3 <= abs(a - b) <= 5}
  assert set(counts) == allowed and max(counts.values()) < 2 * min(counts.values())
  # A video too short for the minimum: its farthest pair.
  short = Timeline.resampled(0, 20, source_fps=25)
  np.testing.assert_array_equal(np.abs(np.diff(pair.timeline_indices(short, r)[:, :, 0], axis=1)), 5)
  # The config key is validated and reaches the sampler.
  c = default_data_config()
  c.update(sampling='clip_pair', clip_pair_min_distance_s=1.0, clip_pair_max_distance_s=0.5)
  with pytest.raises(ValueError, match='config.data.clip_pair_min_distance_s'):
    validate_data_config(c)
  c.clip_pair_max_distance_s = 0.0
  assert make_sampler(c, train=True).min_distance_s == 1.0


def test_distant_frame_pairs_come_from_different_segments():
  r = rng()
  for n in (2, 3, 5):
    bounds = transforms.segment_bounds(0, 100, n)
    pairs = FramePairSampler(num_segments=n, crop_size=8, num_samples=200).timeline_indices(
      Timeline(0, 100), r
    )
    assert pairs.shape == (200, 2, 1)
    segment = np.searchsorted(bounds, pairs[..., 0], side='right') - 1
    assert np.all(segment[:, 0] < segment[:, 1])
    assert len({tuple(s) for s in segment}) == n * (n - 1) // 2  # every pair of segments occurs
  np.testing.assert_array_equal(transforms.distant_frame_pair(0, 100), [25, 75])  # eval: centres


def test_continuous_pairs_are_gap_apart():
  r = rng()
  pairs = FramePairSampler(mode='continuous', gap=6, crop_size=8, num_samples=200)
  idx = pairs.timeline_indices(Timeline(10, 40), r)[..., 0]
  assert np.all(idx[:, 1] - idx[:, 0] == 6) and idx.min() == 10 and idx.max() == 39
  np.testing.assert_array_equal(transforms.continuous_frame_pair(10, 40, 6), [21, 27])
  # The gap counts frames at the target rate (15 fps from 30: 12 source frames).
  idx = pairs.timeline_indices(Timeline.resampled(0, 60, 30, 15), r)[..., 0]
  assert np.all(idx[:, 1] - idx[:, 0] == 12)
  # Shorter than the gap: first and last frame.
  np.testing.assert_array_equal(transforms.continuous_frame_pair(0, 4, 6, r), [0, 3])


def test_fps_resampling_maps_indices():
  half = Timeline.resampled(0, 60, source_fps=30, target_fps=15)
  assert (half.length, half.fps, half.step) == (30, 15, 2)
  np.testing.assert_array_equal(half.frames(np.arange(30)), np.arange(0, 60, 2))  # every other frame
  np.testing.assert_array_equal(
    Timeline.resampled(100, 161, 30, 15).frames(np.arange(31)), np.arange(100, 161, 2)
  )
  # Non-integer ratio: nearest source frame in time (29.97 -> 15 fps).
  ntsc = Timeline.resampled(0, 300, 30000 / 1001, 15)
  np.testing.assert_array_equal(ntsc.frames([0, 2, 4, 6, 149]), [0, 4, 8, 12, 298])
  # Upsampling repeats frames; an unknown source rate keeps the native one.
  np.testing.assert_array_equal(
    Timeline.resampled(0, 5, 15, 30).frames(np.arange(10)), [0, 1, 1, 2, 2, 3, 3, 4, 4, 4]
  )
  assert Timeline.resampled(0, 10, 0, 15) == Timeline(0, 10)
  # A clip's stride counts target-rate frames.
  clip = ClipSampler(num_frames=4, sampling_rate=2, crop_size=8, target_fps=15, num_samples=20)
  idx = clip.timeline_indices(half, rng())
  assert np.all(np.diff(idx, axis=-1) == 4) and np.all(idx % 2 == 0) and idx.max() < 60
  # From a real file (29.97 fps).
  idx = clip.frame_indices(builtin_source('train')[6], rng())
  assert set(np.diff(idx, axis=-1).ravel()) <= {3, 4, 5} and idx.max() < 90


def test_multiview_starts_cover_the_video_evenly():
  views = ClipSampler(num_frames=4, sampling_rate=3, crop_size=8, train=False, temporal_views=5)
  assert views.sample_shape == (5, 4, 8, 8, 3)
  idx = views.timeline_indices(Timeline(0, 100), None)
  assert idx.shape == (1, 5, 4)
  np.testing.assert_array_equal(idx[0, :, 0], [0, 22, 45, 67, 90])  # first .. last fitting start
  assert idx[0, -1, -1] == 99
  # One view: the centred clip, as before; a short range: evenly spread loop offsets.
  one = ClipSampler(num_frames=4, sampling_rate=3, crop_size=8, train=False)
  np.testing.assert_array_equal(one.timeline_indices(Timeline(0, 100), None)[0], [45, 48, 51, 54])
  np.testing.assert_array_equal(views.timeline_indices(Timeline(0, 5), None)[0, :, 0], [0, 1, 2, 3, 4])
  with pytest.raises(ValueError, match='evaluation only'):
    ClipSampler(num_frames=4, sampling_rate=3, crop_size=8, temporal_views=2)


# --- samples (synthetic frames) -------------------------------------------------


def test_three_spatial_crops_on_synthetic_frames(videos):
  landscape, portrait = synthetic_video(3, 16, 40), synthetic_video(3, 40, 16)
  for v, left in zip(transforms.eval_views(landscape, crop_size=16, num_crops=3), (0, 12, 24)):
    np.testing.assert_array_equal(v, landscape[:, :, left : left + 16])  # left / centre / right
  for v, top in zip(transforms.eval_views(portrait, crop_size=16, num_crops=3), (0, 12, 24)):
    np.testing.assert_array_equal(v, portrait[:, top : top + 16])  # top / centre / bottom
  # Through a sampler: views are clip-major, each [T, S, S, 3] with the right frames and columns.
  videos['v'] = synthetic_video(10, 16, 40)
  record = VideoRecord('v', 0, frame_stop=10)
  multi = ClipSampler(
    num_frames=2, sampling_rate=2, crop_size=16, train=False, temporal_views=2, spatial_views=3
  )
  out = pixels(multi(record))
  assert out.shape == (1, 6, 2, 16, 16, 3)
  for clip, frames in enumerate([[0, 2], [7, 9]]):
    for crop, left in enumerate((0, 12, 24)):
      view = out[0, 3 * clip + crop]
      np.testing.assert_array_equal(view[:, 0, 0, 0], frames)
      np.testing.assert_array_equal(view[0, 0, :, 1], 6 * np.arange(left, left + 16))
  # One view of each kind is the plain centre-crop eval clip (no view axis).
  plain = ClipSampler(num_frames=2, sampling_rate=2, crop_size=16, train=False)
  centre = ClipSampler(num_frames=2, sampling_rate=2, crop_size=16, train=False, spatial_views=3)
  assert plain.sample_shape == (2, 16, 16, 3) and centre.sample_shape == (3, 2, 16, 16, 3)
  np.testing.assert_array_equal(plain(record)[0], centre(record)[0, 1])


def test_pairs_get_independent_augmentation_and_reverse(videos):
  videos['v'] = synthetic_video(40)
  record = VideoRecord('v', 0, frame_stop=40)
  # Same frame twice (gap 0): the two views differ only by their own crop / flip.
  same = FramePairSampler(mode='continuous', gap=0, crop_size=8, num_samples=4)(record, rng())
  assert same.shape == (4, 2, 1, 8, 8, 3)
  for sample in same:
    assert not np.allclose(sample[0], sample[1])
  # Reversed records play each clip backwards.
  reverse = VideoRecord('v', 0, reverse=True, frame_stop=40)
  pair = ClipPairSampler(num_frames=4, sampling_rate=3, crop_size=8, train=False)
  red = pixels(pair(reverse))[0, :, :, 0, 0, 0]  # [2, T] frame numbers
  np.testing.assert_array_equal(red, pair.frame_indices(record, None)[0, :, ::-1])


@pytest.mark.parametrize('length', [1, 2, 3])
def test_short_videos_do_not_crash(videos, length):
  videos['v'] = synthetic_video(length)
  record = VideoRecord('v', 0, frame_stop=length)
  for train in (True, False):
    for sampler in all_samplers(crop_size=8, num_samples=2 if train else 1, train=train):
      out = sampler(record, rng())
      assert out.shape == (sampler.num_samples, *sampler.sample_shape)
      assert set(pixels(out)[..., 0].ravel()) <= set(range(length))
  # No frames at all: a decode error (the loader skips the record), not a crash.
  with pytest.raises(decode.VideoDecodeError, match='no frames'):
    ClipSampler(num_frames=4, sampling_rate=3, crop_size=8)(
      VideoRecord('v', 0, frame_start=3, frame_stop=3), rng()
    )


def test_repeated_samples_differ_and_rng_determines_them(videos):
  videos['v'] = synthetic_video(40)
  record = VideoRecord('v', 0, frame_stop=40)
  for sampler in all_samplers(crop_size=8, num_samples=4):
    out = sampler(record, rng(1))
    assert out.shape == (4, *sampler.sample_shape) and out.dtype == np.uint8
    for i in range(4):
      for j in range(i + 1, 4):
        assert not np.allclose(out[i], out[j]), sampler
    np.testing.assert_array_equal(sampler(record, rng(1)), out)
    assert not np.array_equal(sampler(record, rng(2)), out)
    with pytest.raises(ValueError, match='needs an rng'):
      sampler(record)


def test_cache_gives_the_same_samples():
  record = builtin_source('train')[6]  # carphone, 176 x 144
  cache = VideoCache(1)
  for sampler in all_samplers(crop_size=16, num_samples=2, decode_short_side=32):
    np.testing.assert_array_equal(sampler(record, rng(), cache=cache), sampler(record, rng()))
  assert cache.misses == 1 and cache.hits == 4


# --- config and loader ----------------------------------------------------------


def test_config_errors_name_the_key():
  bad = [
    ('sampling', 'tubelets'),
    ('frame_pair_mode', 'random'),
    ('frame_pair_segments', 1),
    ('frame_pair_gap', -1),
    ('eval_temporal_views', 0),
    ('eval_spatial_views', 2),
  ]
  for key, value in bad:
    cfg = small_config()
    with cfg.ignore_type():
      cfg[key] = value
    with pytest.raises(ValueError, match=f'config.data.{key}'):
      make_loader(cfg, split='train', global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match='config.data.sampling'):
    make_sampler(small_config(sampling='tubelets'), train=True)
  with pytest.raises(ValueError, match='config.data.eval_temporal_views'):
    make_loader(
      small_config(sampling='clip_pair', eval_temporal_views=2), split='test', global_batch_size=2, seed=0
    )
  assert set(sampling.SAMPLERS) == {'clip', 'segment', 'clip_pair', 'frame_pair'}


def take_one(ds):
  it = iter(ds)
  try:
    return next(it)
  finally:
    it.close()


@pytest.mark.parametrize(
  'overrides, shape',
  [
    (dict(sampling='segment'), (2, 4, 32, 32, 3)),
    (dict(sampling='clip_pair', clip_pair_max_distance_s=1.0, target_fps=12.5), (2, 2, 4, 32, 32, 3)),
    (dict(sampling='frame_pair'), (2, 2, 1, 32, 32, 3)),
  ],
)
def test_loader_batch_shapes(overrides, shape):
  ds, info = make_loader(small_config(**overrides), split='train', global_batch_size=2, seed=0)
  batch = take_one(ds)
  assert batch['video'].shape == shape and batch['video'].dtype == np.uint8
  records = builtin_source('train')  # each sample carries its record's label
  assert batch['label'].tolist() == [records[i].label for i in batch['index']]
  assert make_sampler(small_config(**overrides), train=True).sample_shape == shape[1:]


def test_loader_multiview_eval():
  test = builtin_source('test')
  carphone = VideoSource(test[6:], test.class_names, name='carphone:test')
  cfg = small_config(eval_temporal_views=2, eval_spatial_views=3)
  ds, info = make_loader(cfg, split='test', global_batch_size=2, seed=0, train=False, source=carphone)
  batch = take_one(ds)
  assert batch['video'].shape == (2, 6, 4, 32, 32, 3) and info.repeated_sampling == 1
  # The centre crop of the first clip view is not the left or right one.
  assert not np.allclose(batch['video'][:, 0], batch['video'][:, 1])
