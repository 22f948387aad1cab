"""Unreadable videos: skipped and counted, and a mostly broken data set stops.

Small on purpose: 4-frame 32 px clips, no worker processes, no prefetch (so
the skip count after a batch is exact).
"""

import shutil

import numpy as np
import pytest

from mvm_jax.data import VideoRecord, VideoSource, builtin_source, default_data_config, make_loader, sources
from mvm_jax.data.pipeline import BadDataError


def small_config(**overrides):
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
  ds, info = make_loader(small_config(), split='train', global_batch_size=2, seed=0, source=src)
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
  cfg = small_config(max_bad_fraction=1.0, repeated_sampling=2)
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
  ds, info = make_loader(small_config(), split='train', global_batch_size=8, seed=0, source=src)
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
    make_loader(small_config(max_bad_fraction=1.5), split='train', global_batch_size=2, seed=0)
