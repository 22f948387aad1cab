"""mvm_jax.data.decode: whole and windowed decoding agree, errors name the file, the decoded-video cache."""

import pickle

import av
import numpy as np
import pytest

from mvm_jax.data import VideoCache, VideoDecodeError, decode_frames, decode_video, probe_video, sources


def clip_path(name):
  return str(sources.builtin_data_dir() / f'{name}.mp4')


@pytest.fixture
def bad_files(tmp_path):
  empty = tmp_path / 'empty.mp4'
  empty.write_bytes(b'')
  garbage = tmp_path / 'garbage.mp4'
  garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
  return str(empty), str(garbage)


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
