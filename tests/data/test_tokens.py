"""Tests for mvm_jax.data.tokens: extracting VQ tokens of videos, and the token loader.

A cheap numpy stand-in plays the frozen tokenizer (the quantized mean of each
8 x 8 block: 32 px crops -> 4 x 4 codes in [0, 16)), on a few built-in clips at
2 fps (3 to 15 token frames a video), so values can be checked exactly.
"""

import copy
import dataclasses
import functools
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from mvm_jax.data import (
  decode,
  default_data_config,
  make_loader,
  sources,
  token_extraction,
  tokens,
  transforms,
)
from mvm_jax.data.sources import VideoRecord, VideoSource

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CROP = 32
FPS = 2.0
SHORT_SIDE = 64
VOCAB = 16
PAD = VOCAB + 1  # token_vocab.special_token_ids(16).pad_id
FRAMES_PER_CALL = 5
VIDEOS_PER_CHUNK = 2


def block_codes(frames):
  """float32 [N, S, S, 3] normalized -> int32 [N, S/8, S/8]: each 8 x 8 block's mean, quantized."""
  n, s = frames.shape[:2]
  means = frames.reshape(n, s // 8, 8, s // 8, 8, 3).mean(axis=(2, 4, 5))
  return np.clip(np.floor((means + 2.0) * 4), 0, VOCAB - 1).astype(np.int32)


class Tokenize:
  """block_codes, counting calls and the frames it was given; raises on call ``fail_at``."""

  def __init__(self, fail_at=None):
    self.calls = 0
    self.batch_sizes = []
    self.fail_at = fail_at

  def __call__(self, frames):
    self.calls += 1
    if self.calls == self.fail_at:
      raise KeyboardInterrupt('interrupted')
    self.batch_sizes.append(frames.shape[0])
    return block_codes(frames)


def builtin(split, index):
  return sources.builtin_source(split)[index]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """Two splits of built-in clips; train has a corrupt file at position 2."""
  root = tmp_path_factory.mktemp('tokens')
  bad = root / 'corrupt.mp4'
  bad.write_bytes(b'\x00garbage' * 64)
  names = sources.builtin_class_names()
  train = [
    builtin('train', 0),
    builtin('train', 1),
    VideoRecord(str(bad), 3),
    builtin('train', 2),
    builtin('train', 4),
  ]
  test = [builtin('test', 6), builtin('test', 3)]
  return root, {
    'train': VideoSource(train, names, name='subset:train', check_files=False),
    'test': VideoSource(test, names, name='subset:test', check_files=False),
  }


def extract(corpus, name, tokenize, **overrides):
  root, split_sources = corpus
  kwargs = {
    'name': name,
    'data_dir': str(root / 'tfds'),
    'vocab_size': VOCAB,
    'crop_size': CROP,
    'target_fps': FPS,
    'mean': MEAN,
    'std': STD,
    'short_side': SHORT_SIDE,
    'frames_per_call': FRAMES_PER_CALL,
    'videos_per_chunk': VIDEOS_PER_CHUNK,
    'tokenizer': 'block means',
    'num_threads': 2,
  }
  kwargs.update(overrides)
  return token_extraction.extract_tokens(split_sources, tokenize, **kwargs)


@pytest.fixture(scope='module')
def extracted(corpus):
  reports = []
  tokenize = Tokenize()
  result = extract(corpus, 'clip_tokens', tokenize, progress=lambda p: reports.append(copy.copy(p)))
  return result, reports, tokenize


def data_config(corpus, **overrides):
  dc = default_data_config()
  dc.update(
    source='tokens',
    tfds_name='clip_tokens',
    tfds_data_dir=str(corpus[0] / 'tfds'),
    crop_size=CROP,
    num_frames=5,
    sampling_rate=2,
    sampling='clip_pair',
    target_fps=FPS,
    repeated_sampling=2,
    num_workers=0,
    prefetch=1,
  )
  dc.update(overrides)
  return dc


def take(ds, n=None):
  it = iter(ds)
  try:
    return list(it) if n is None else [next(it) for _ in range(n)]
  finally:
    it.close()


@functools.cache
def decoded(path):
  return decode.decode_video(path, short_side=SHORT_SIDE)


def reference_tokens(record):
  """The expected tokens of a record, computed the straightforward way."""
  info = decode.probe_video(record.path)
  frames = decoded(record.path)
  stop = record.frame_stop
  step = info.fps / FPS  # source frames per token frame
  count = math.ceil((stop - record.frame_start) / step - 1e-6)
  picked = [min(record.frame_start + math.floor(j * step + 0.5), stop - 1) for j in range(count)]
  h, w = frames.shape[1:3]
  side = min(h, w)
  box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
  crops = np.stack(
    [np.asarray(Image.fromarray(frames[i]).resize((CROP, CROP), Image.BILINEAR, box=box)) for i in picked]
  )
  codes = block_codes(transforms.normalize(crops, MEAN, STD))
  return codes[::-1] if record.reverse else codes


def test_extracted_tokens_equal_the_tokenized_frames(corpus, extracted):
  _, split_sources = corpus
  for split, source in split_sources.items():
    readable = [r for r in source if 'corrupt' not in r.path]
    ts = tokens.TokenSource('clip_tokens', split, data_dir=str(corpus[0] / 'tfds'))
    assert len(ts) == len(readable) and ts.class_names == sources.builtin_class_names()
    for i, record in enumerate(readable):
      got = ts[i]
      expected = reference_tokens(record)
      assert got.tokens.dtype == np.uint16 and got.tokens.shape == (len(expected), CROP // 8, CROP // 8)
      np.testing.assert_array_equal(got.tokens, expected, err_msg=f'{split} {i}')
      assert (got.label, got.path, got.fps) == (record.label, record.path, FPS)
  # 2 fps: 8, 8, 15, 7 frames (train), 3 and 6 (test).
  assert [
    len(r.tokens) for r in tokens.TokenSource('clip_tokens', 'train', data_dir=str(corpus[0] / 'tfds'))
  ] == [
    8,
    8,
    15,
    7,
  ]


def test_token_info_and_progress(corpus, extracted):
  result, reports, tokenize = extracted
  info = tokens.token_info(data_config(corpus))
  assert info['vocab_size'] == VOCAB and info['token_shape'] == [4, 4] and info['crop_size'] == CROP
  assert info['target_fps'] == FPS and info['mean'] == list(MEAN) and info['std'] == list(STD)
  assert info['tokenizer'] == 'block means' and info['decode_short_side'] == SHORT_SIDE
  assert info['splits'] == {
    'train': {'videos': 4, 'skipped': 1, 'frames': 38},
    'test': {'videos': 2, 'skipped': 0, 'frames': 9},
  }
  # The corrupt file is skipped and listed; one report per video.
  assert (result.total, result.done, result.skipped, result.resumed) == (7, 7, 1, 0)
  assert result.skipped_paths == [str(corpus[0] / 'corrupt.mp4')]
  assert [p.done for p in reports] == list(range(1, 8)) and reports[-1].split == 'test'
  assert result.frames == result.tokenized_frames == 47 and not math.isnan(reports[0].eta)
  # Fixed-size calls, frames of consecutive videos batched per chunk of 2 videos:
  # chunks of 16, 15 (one skipped), 7 and 9 frames.
  assert set(tokenize.batch_sizes) == {FRAMES_PER_CALL}
  assert tokenize.calls == result.tokenize_calls == 4 + 3 + 2 + 2
  assert not os.path.exists(corpus[0] / 'tfds' / 'clip_tokens' / token_extraction.PARTIAL_DIR)


def test_interrupted_extraction_resumes(corpus, extracted):
  root = corpus[0]
  partial = root / 'tfds' / 'resumed' / token_extraction.PARTIAL_DIR
  # Interrupted in the 2nd chunk (the 6th call): the 1st chunk (4 calls) is saved.
  with pytest.raises(KeyboardInterrupt):
    extract(corpus, 'resumed', Tokenize(fail_at=6))
  assert sorted(p for p in os.listdir(partial) if not p.startswith('.')) == ['args.json', 'train-000000.npz']
  # Other arguments: a clear error instead of mixing tokens.
  with pytest.raises(ValueError, match=r"other arguments \(differing: \['tokenizer'\]\).*overwrite"):
    extract(corpus, 'resumed', Tokenize(), tokenizer='another tokenizer')
  tokenize = Tokenize()
  result = extract(corpus, 'resumed', tokenize)
  assert (result.resumed, result.done, result.skipped, result.frames) == (2, 7, 1, 47)
  assert result.skipped_paths == [str(root / 'corrupt.mp4')]
  # Only the 3 remaining chunks were tokenized (31 frames of 5 videos, 7 calls).
  assert tokenize.calls == 3 + 2 + 2 and result.tokenized_frames == 47 - 16
  assert not partial.exists()
  for split in ('train', 'test'):
    a = tokens.TokenSource('resumed', split, data_dir=str(root / 'tfds'))
    b = tokens.TokenSource('clip_tokens', split, data_dir=str(root / 'tfds'))
    assert len(a) == len(b)
    for i in range(len(a)):
      assert dataclasses.astuple(a[i])[1:] == dataclasses.astuple(b[i])[1:]
      np.testing.assert_array_equal(a[i].tokens, b[i].tokens)
  with pytest.raises(FileExistsError, match='resumed'):
    extract(corpus, 'resumed', Tokenize())


def matching_starts(clip, video, rate):
  """First frames s at which ``clip`` [T, h, w] equals the video's frames s, s + rate, ... (PAD past the end)."""
  starts = []
  for s in range(len(video)):
    positions = s + rate * np.arange(len(clip))
    expected = np.stack([video[p] if p < len(video) else np.full(video.shape[1:], PAD) for p in positions])
    if np.array_equal(clip, expected):
      starts.append(s)
  return starts


def test_loader_clip_pairs_and_pad(corpus, extracted):
  dc = data_config(corpus)
  ds, info = make_loader(dc, split='train', global_batch_size=4, seed=0)
  assert (info.num_records, info.repeated_sampling, info.samples_per_epoch, info.num_classes) == (4, 2, 4, 8)
  videos = [r.tokens for r in tokens.TokenSource('clip_tokens', 'train', data_dir=dc.tfds_data_dir)]
  batches = take(ds, 4)
  for batch in batches:
    assert batch['tokens'].dtype == np.int32 and batch['tokens'].shape == (4, 2, 5, 4, 4)
    assert batch['label'].dtype == np.int32 and batch['index'].dtype == np.int32
    for clips, index, label in zip(batch['tokens'], batch['index'], batch['label']):
      video = videos[index]
      assert label == [0, 1, 2, 4][index]
      for clip in clips:  # both clips come from that video
        starts = matching_starts(clip, video.astype(np.int32), 2)
        # A clip spans 9 frames: the 7- and 8-frame videos give clips from 0, PAD-ended.
        if len(video) < 9:
          assert starts == [0], (index, clip[:, 0, 0])
        else:
          assert starts and max(starts) <= len(video) - 9, (index, clip[:, 0, 0])
  assert {int(i) for b in batches for i in b['index']} == {0, 1, 2, 3}
  # Eval: centre clip; a short video's clip is PAD exactly past its end.
  (batch,) = take(
    make_loader(
      data_config(corpus, sampling='clip'), split='train', global_batch_size=4, seed=0, train=False
    )[0]
  )
  assert batch['tokens'].shape == (4, 5, 4, 4) and batch['index'].tolist() == [0, 1, 2, 3]
  for clip, video in zip(batch['tokens'], videos):
    n = len(video)
    positions = np.arange(5) * 2 + (3 if n == 15 else 0)
    for t, p in enumerate(positions):
      np.testing.assert_array_equal(clip[t], video[p] if p < n else np.full((4, 4), PAD))
  assert (batch['tokens'][3, 4] == PAD).all() and (batch['tokens'][3, 3] != PAD).all()  # 7 frames: 0..6


def test_token_records_in_a_worker_process(corpus, extracted):
  kwargs = {'split': 'train', 'global_batch_size': 2, 'seed': 5}
  in_process = take(make_loader(data_config(corpus), **kwargs)[0], 2)
  in_worker = take(make_loader(data_config(corpus, num_workers=1), **kwargs)[0], 2)
  for a, b in zip(in_process, in_worker):
    for key in ('tokens', 'label', 'index'):
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_clip_pair_max_distance(corpus, extracted):
  dc = data_config(corpus, clip_pair_max_distance_s=0.5, repeated_sampling=4)  # 1 frame at 2 fps
  video = tokens.TokenSource('clip_tokens', 'train', data_dir=dc.tfds_data_dir)[2].tokens.astype(np.int32)
  gaps = set()
  for batch in take(make_loader(dc, split='train', global_batch_size=8, seed=1)[0], 3):
    for clips in batch['tokens'][batch['index'] == 2]:
      (a,), (b,) = (matching_starts(c, video, 2) for c in clips)
      gaps.add(abs(a - b))
  assert gaps and gaps <= {0, 1}


def test_iterator_state_round_trip(corpus, extracted):
  dc = data_config(corpus)
  ds, _ = make_loader(dc, split='train', global_batch_size=2, seed=3)
  it = iter(ds)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(2)]
  it.close()
  it = iter(make_loader(dc, split='train', global_batch_size=2, seed=3)[0])
  it.set_state(state)
  for want in expected:
    got = next(it)
    for key in ('tokens', 'label', 'index'):
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  it.close()


def test_config_errors_name_the_key(corpus, extracted):
  cases = [
    ({'tfds_name': ''}, 'tfds_name', 'needs data.tfds_name'),
    ({'tfds_name': 'missing'}, 'tfds_name', "no tfds dataset 'missing'"),
    ({'sampling': 'segment'}, 'sampling', "not 'segment'"),
    ({'crop_size': 64}, 'crop_size', 'extracted from 32 px crops'),
    ({'target_fps': 4.0}, 'target_fps', 'at 2.0 fps'),
    ({'sampling': 'clip', 'eval_temporal_views': 2}, 'eval_temporal_views', 'multi-view'),
  ]
  for overrides, key, what in cases:
    with pytest.raises(ValueError, match=f'config.data.{key}') as e:
      make_loader(data_config(corpus, **overrides), split='train', global_batch_size=2, seed=0)
    assert what in str(e.value), str(e.value)
  with pytest.raises(ValueError, match='config.data.tfds_name: unset'):
    tokens.token_info(data_config(corpus, tfds_name=''))
  with pytest.raises(ValueError, match=r'config.data.tfds_name: .*missing.*' + str(corpus[0])):
    tokens.token_info(data_config(corpus, tfds_name='missing'))
  with pytest.raises(ValueError, match='uint16'):
    extract(corpus, 'too_big', Tokenize(), vocab_size=70000)
  with pytest.raises(ValueError, match=r'outside \[0, vocab_size=8\)'):
    extract(corpus, 'small_vocab', Tokenize(), vocab_size=8)
