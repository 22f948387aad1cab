"""Tests for the video sources: list files, folders, tfds (array_record) and packing.

Fixtures are tiny re-encoded clips (12 frames, 48 x 56 px, made from the
carphone sample clip) so packing, decoding and loading stay fast.
"""

import io
import pickle

import av
import numpy as np
import pytest

from mvm_jax.data import (
  VideoCache,
  VideoDecodeError,
  build_source,
  builtin_source,
  decode_frames,
  decode_video,
  default_data_config,
  make_loader,
  probe_video,
  sources,
)
from mvm_jax.data.decode import VideoBlob
from mvm_jax.data.sources import folder_source, list_source, read_class_names
from tests.conftest import run_module

NUM_CLIP_FRAMES = 12


def write_clip(path, frames, fps=25):
  """Encodes uint8 [T, H, W, 3] frames as an mpeg4 .mp4 (keyframe every 4 frames)."""
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('mpeg4', rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = 'yuv420p'
    stream.codec_context.gop_size = 4
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')))
    container.mux(stream.encode())


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  """Three distinct tiny mp4 clips: name -> bytes."""
  d = tmp_path_factory.mktemp('clips')
  source = decode_video(str(sources.builtin_data_dir() / 'carphone_distorted.mp4'), short_side=48)
  out = {}
  for i, name in enumerate(('c0.mp4', 'c1.mp4', 'c2.mp4')):
    start = 30 * i
    write_clip(d / name, np.ascontiguousarray(source[start : start + NUM_CLIP_FRAMES, :, :56]))
    out[name] = (d / name).read_bytes()
  return out


def put(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
  return path


def data_config(**overrides):
  dc = default_data_config()
  dc.update(dict(num_frames=4, sampling_rate=2, crop_size=32, repeated_sampling=2, num_workers=0, prefetch=1))
  dc.update(overrides)
  return dc


def take(ds, n=None):
  it = iter(ds)
  try:
    return list(it) if n is None else [next(it) for _ in range(n)]
  finally:
    it.close()


def assert_batches_equal(a, b, keys=('video', 'label')):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for key in keys:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --- built-in clips: the labelled windows ----------------------------------------


def test_builtin_frame_ranges():
  assert sources.builtin_frame_ranges(132, 'train') == [(0, 99)]
  assert sources.builtin_frame_ranges(132, 'test') == [(99, 132)]
  # 29-frame windows from frame 0, alternately train and test; a partial last one is dropped.
  assert sources.WINDOW_FRAMES == 29
  assert sources.builtin_frame_ranges(132, 'train_windows') == [(0, 29), (58, 87)]
  assert sources.builtin_frame_ranges(132, 'test_windows') == [(29, 58), (87, 116)]
  assert sources.builtin_frame_ranges(87, 'train_windows') == [(0, 29), (58, 87)]
  assert sources.builtin_frame_ranges(87, 'test_windows') == [(29, 58)]
  assert (
    sources.builtin_frame_ranges(28, 'train_windows')
    == sources.builtin_frame_ranges(28, 'test_windows')
    == []
  )
  with pytest.raises(ValueError, match="unknown split 'val'"):
    sources.builtin_frame_ranges(132, 'val')


def _frames(records, path):
  """Frame ids the records of ``path`` cover, and how many times each is covered."""
  covered = [f for r in records if r.path == path for f in range(r.frame_start, r.frame_stop)]
  return set(covered), len(covered)


def test_builtin_window_splits_are_disjoint_and_labelled():
  train, test = (build_source(data_config(), split) for split in ('train_windows', 'test_windows'))
  assert len(train) == len(test) == 20 and train.name == 'builtin:train_windows'
  assert train.class_names == test.class_names == sources.builtin_class_names()
  paths = [str(sources.builtin_data_dir() / f'{clip}.mp4') for clip in sources.BUILTIN_CLIPS]
  assert [probe_video(p).num_frames for p in paths] == [132, 250, 120, 120]
  for split in (train, test):
    # Ordered (clip, window, direction): a window's forward record, then its reversed copy.
    for forward, backward in zip(split[::2], split[1::2]):
      assert (forward.path, forward.frame_start, forward.frame_stop) == (
        backward.path,
        backward.frame_start,
        backward.frame_stop,
      )
      assert not forward.reverse and backward.reverse
      assert forward.path == paths[forward.label // 2]  # label 2 * clip + reversed
      assert forward.label % 2 == 0 and backward.label == forward.label + 1
      assert forward.frame_stop - forward.frame_start == 29
    assert [sum(r.path == p for r in split) for p in paths] == [4, 8, 4, 4]  # 2, 4, 2, 2 windows x 2
    assert np.bincount([r.label for r in split]).tolist() == [2, 2, 4, 4, 2, 2, 2, 2]
  bikes = paths[1]
  assert [(r.frame_start, r.frame_stop) for r in train[::2] if r.path == bikes] == [
    (0, 29),
    (58, 87),
    (116, 145),
    (174, 203),
  ]
  assert [(r.frame_start, r.frame_stop) for r in test[::2] if r.path == bikes] == [
    (29, 58),
    (87, 116),
    (145, 174),
    (203, 232),
  ]
  for path, num_frames in zip(paths, (132, 250, 120, 120)):
    (train_frames, n_train), (test_frames, n_test) = _frames(train[::2], path), _frames(test[::2], path)
    assert len(train_frames) == n_train and len(test_frames) == n_test  # windows of a split do not overlap
    assert not train_frames & test_frames  # no frame in both splits
    assert max(train_frames | test_frames) < num_frames
  # The pre-training split keeps its 8 records (first 75% of each clip, both directions).
  pretrain = build_source(data_config(), 'train')
  assert len(pretrain) == 8 and [r.frame_stop for r in pretrain[::2]] == [99, 187, 90, 90]


def test_builtin_window_loader_gives_labelled_reversible_clips():
  dc = data_config(crop_size=16, decode_short_side=32, cache_decoded_videos=4)
  ds, info = make_loader(dc, split='test_windows', global_batch_size=20, seed=0, train=False)
  (batch,) = take(ds)
  test = build_source(dc, 'test_windows')
  assert info.num_records == 20 and info.num_classes == 8
  assert batch['index'].tolist() == list(range(20))
  assert batch['label'].tolist() == [r.label for r in test]
  # Each reversed record is its window's forward clip backwards.
  video = batch['video']
  np.testing.assert_array_equal(video[1::2], video[0::2][:, ::-1])
  assert not np.array_equal(video[1::2], video[0::2])


# --- list files (source 'csv') -------------------------------------------------


def test_list_files_space_and_comma_with_header(tmp_path, clips):
  for name, data in clips.items():
    put(tmp_path / 'videos' / name, data)
  put(tmp_path / 'lists' / 'train.txt', '# Kinetics style\nvideos/c0.mp4 2\n\nvideos/c1.mp4 0\n')
  put(tmp_path / 'lists' / 'test.csv', 'path,label\n"videos/c2.mp4", 1\nvideos/c0.mp4,0\n')
  root = str(tmp_path)
  train = list_source(str(tmp_path / 'lists' / 'train.txt'), 'train', root=root)
  assert [(r.path, r.label) for r in train] == [(f'{root}/videos/c0.mp4', 2), (f'{root}/videos/c1.mp4', 0)]
  assert train.class_names == ('class_0', 'class_1', 'class_2')
  # {split} in the path, via the config; the header line is skipped.
  dc = data_config(source='csv', path=str(tmp_path / 'lists' / '{split}.csv'), root=root)
  test = build_source(dc, 'test')
  assert [(r.path, r.label) for r in test] == [(f'{root}/videos/c2.mp4', 1), (f'{root}/videos/c0.mp4', 0)]
  # Root defaults to the list file's directory.
  put(tmp_path / 'videos' / 'here.txt', 'c1.mp4 0\n')
  assert list_source(str(tmp_path / 'videos' / 'here.txt'), 'x')[0].path == f'{root}/videos/c1.mp4'
  # Path-only lines: an unlabeled source.
  put(tmp_path / 'videos' / 'unlabeled.txt', 'path\nc1.mp4\nc2.mp4\n')
  unlabeled = list_source(str(tmp_path / 'videos' / 'unlabeled.txt'), 'x')
  assert [r.label for r in unlabeled] == [0, 0] and unlabeled.class_names == ('unlabeled',)


def test_class_names_files(tmp_path, clips):
  put(tmp_path / 'c0.mp4', clips['c0.mp4'])
  put(tmp_path / 'names.txt', 'cat\ndog\n\nbird\n')
  put(tmp_path / 'classInd.txt', '1 Apply Eye Makeup\n2 Archery\n')  # UCF101: 1-based ids
  assert read_class_names(str(tmp_path / 'names.txt')).names == ('cat', 'dog', 'bird')
  put(tmp_path / 'l.csv', 'c0.mp4,2\nc0.mp4,dog\n')  # ids or names
  s = list_source(str(tmp_path / 'l.csv'), 'x', class_names_file=str(tmp_path / 'names.txt'))
  assert [r.label for r in s] == [2, 1] and s.class_names == ('cat', 'dog', 'bird')
  put(tmp_path / 'ucf.txt', 'c0.mp4 2\nc0.mp4 1\n')
  s = list_source(str(tmp_path / 'ucf.txt'), 'x', class_names_file=str(tmp_path / 'classInd.txt'))
  assert [r.label for r in s] == [1, 0] and s.class_names == ('Apply Eye Makeup', 'Archery')


# --- folders (source 'folder') -------------------------------------------------


def test_folder_with_split_and_class_subfolders(tmp_path, clips):
  put(tmp_path / 'train' / 'walk' / 'a.mp4', clips['c0.mp4'])
  put(tmp_path / 'train' / 'walk' / 'deeper' / 'b.MKV', clips['c1.mp4'])
  put(tmp_path / 'train' / 'run' / 'c.mp4', clips['c2.mp4'])
  put(tmp_path / 'train' / 'run' / 'notes.txt', 'not a video')
  put(tmp_path / 'test' / 'swim' / 'd.webm', clips['c0.mp4'])
  dc = data_config(source='folder', path=str(tmp_path))
  train, test = build_source(dc, 'train'), build_source(dc, 'test')
  # Classes: every split's folders, sorted, so labels agree across splits.
  assert train.class_names == test.class_names == ('run', 'swim', 'walk')
  assert [(r.path[len(str(tmp_path)) :], r.label) for r in train] == [
    ('/train/run/c.mp4', 0),
    ('/train/walk/a.mp4', 2),
    ('/train/walk/deeper/b.MKV', 2),
  ]
  assert [r.label for r in test] == [1]
  # No split folder: the directory itself.
  only = folder_source(str(tmp_path / 'train'), 'validation')
  assert only.class_names == ('run', 'walk') and len(only) == 3
  # Videos without class folders: unlabeled.
  flat = folder_source(str(tmp_path / 'train' / 'walk' / 'deeper'), 'train')
  assert flat.class_names == ('unlabeled',) and len(flat) == 1


# --- one clear error per mistake -----------------------------------------------


def test_source_errors_name_the_key_and_place(tmp_path, clips):
  put(tmp_path / 'v' / 'c0.mp4', clips['c0.mp4'])
  put(tmp_path / 'empty.csv', 'path,label\n\n')
  put(tmp_path / 'bad.txt', 'v/c0.mp4 0\nv/c0.mp4 1 extra,field\n')
  put(tmp_path / 'label.csv', 'v/c0.mp4,0\nv/c0.mp4,-3\n')
  put(tmp_path / 'mixed.csv', 'v/c0.mp4,0\nv/c0.mp4\n')
  put(tmp_path / 'first.csv', 'v/c0.mp4,zero\n')  # a bad first label is no header
  put(tmp_path / 'wrong_root.csv', 'c0.mp4,0\n')
  put(tmp_path / 'file', 'x')
  put(tmp_path / 'novideos' / 'a' / 'x.txt', 'x')
  put(tmp_path / 'both' / 'loose.mp4', clips['c0.mp4'])
  put(tmp_path / 'both' / 'cls' / 'x.mp4', clips['c0.mp4'])
  csv = dict(source='csv')
  cases = [
    (dict(csv, path=str(tmp_path / 'lists/{split}.csv')), 'path', 'lists/train.csv'),
    (dict(csv, path=str(tmp_path / 'empty.csv')), 'path', 'lists no videos'),
    (dict(csv, path=str(tmp_path / 'bad.txt')), 'path', 'bad.txt:2: label'),
    (dict(csv, path=str(tmp_path / 'label.csv')), 'path', "label.csv:2: label '-3'"),
    (dict(csv, path=str(tmp_path / 'mixed.csv')), 'path', 'mixed.csv:2: expected'),
    (dict(csv, path=str(tmp_path / 'first.csv')), 'path', "first.csv:1: label 'zero'"),
    (dict(csv, path=str(tmp_path / 'wrong_root.csv')), 'root', 'wrong_root.csv:1: video not found'),
    (dict(csv, path=str(tmp_path / 'label.csv'), root=str(tmp_path / 'nope')), 'root', 'nope'),
    (dict(csv, path=str(tmp_path / 'label.csv'), root=str(tmp_path / 'file')), 'root', 'not a directory'),
    (
      dict(csv, path=str(tmp_path / 'label.csv'), class_names_file=str(tmp_path / 'x')),
      'class_names_file',
      '/x',
    ),
    (dict(source='csv'), 'path', 'needs data.path'),
    (dict(source='folder', path=str(tmp_path / 'nope')), 'path', 'nope'),
    (dict(source='folder', path=str(tmp_path / 'novideos')), 'path', 'no video files'),
    (dict(source='folder', path=str(tmp_path / 'both')), 'path', 'loose.mp4'),
    (dict(source='tfds'), 'tfds_name', 'needs data.tfds_name'),
    (dict(source='tfds', tfds_name='nope', tfds_data_dir=str(tmp_path)), 'tfds_name', "'nope'"),
  ]
  for overrides, key, where in cases:
    with pytest.raises(ValueError, match=f'config.data.{key}') as e:
      make_loader(data_config(**overrides), split='train', global_batch_size=2, seed=0)
    assert where in str(e.value), (overrides, str(e.value))


# --- byte-backed records -------------------------------------------------------


def test_video_blob_decodes_like_the_file_and_pickles_small(tmp_path, clips):
  path = put(tmp_path / 'c1.mp4', clips['c1.mp4'])
  reads = []

  def reader():
    reads.append(1)
    return clips['c1.mp4']

  blob = VideoBlob('mem://c1', reader)
  assert probe_video(blob) == probe_video(str(path))
  idx = [9, 0, 5, 5]
  np.testing.assert_array_equal(decode_frames(blob, idx), decode_frames(str(path), idx))
  np.testing.assert_array_equal(decode_video(blob), decode_video(str(path)))
  assert len(reads) == 1  # read once, however often opened
  # Pickling keeps the name, drops the bytes (the reader is module-level only here).
  copy = pickle.loads(pickle.dumps(VideoBlob('mem://c1', sorted, data=clips['c1.mp4'])))
  assert copy == 'mem://c1' and not copy.holds_bytes
  # The cache keys on the name: distinct videos never share an entry.
  cache = VideoCache(4)
  other = VideoBlob('mem://c2', None, data=clips['c2.mp4'])
  a = cache.get_frames(blob, [1, 3], start=0, stop=NUM_CLIP_FRAMES)
  b = cache.get_frames(other, [1, 3], start=0, stop=NUM_CLIP_FRAMES)
  assert len(cache) == 2 and not np.array_equal(a, b)
  np.testing.assert_array_equal(cache.get_frames(blob, [3], start=0, stop=NUM_CLIP_FRAMES), a[1:])
  assert cache.hits == 1
  with pytest.raises(VideoDecodeError, match='mem://bad'):
    decode_frames(VideoBlob('mem://bad', None, data=b'\x00' * 500), [0])
  with pytest.raises(VideoDecodeError, match='mem://gone.*cannot read'):
    probe_video(VideoBlob('mem://gone', dict().pop))


# --- tfds: pack, then read back ------------------------------------------------


@pytest.fixture(scope='module')
def packed(tmp_path_factory, clips):
  """A CSV data set (with a corrupt file) and its packed tfds copy."""
  root = tmp_path_factory.mktemp('packed')
  for name, data in clips.items():
    put(root / 'videos' / name, data)
  put(root / 'videos' / 'corrupt.mp4', clips['c1.mp4'][:300])
  put(
    root / 'train.csv',
    'path,label\nvideos/c0.mp4,0\nvideos/corrupt.mp4,1\nvideos/c1.mp4,1\nvideos/c2.mp4,2\n',
  )
  put(root / 'test.csv', 'videos/c2.mp4,2\nvideos/c0.mp4,0\n')
  put(root / 'classes.txt', 'zero\none\ntwo\n')
  from mvm_jax.tools import pack_videos

  out = io.StringIO()
  result = pack_videos.pack(
    'csv',
    str(root / '{split}.csv'),
    name='tiny_videos',
    data_dir=str(root / 'tfds'),
    splits=('train', 'test'),
    class_names_file=str(root / 'classes.txt'),
    report_every_s=0.0,
    out=out,
  )
  csv_config = dict(source='csv', path=str(root / '{split}.csv'), class_names_file=str(root / 'classes.txt'))
  tfds_config = dict(source='tfds', tfds_name='tiny_videos', tfds_data_dir=str(root / 'tfds'))
  return root, result, out.getvalue(), csv_config, tfds_config


def test_pack_reports_progress_and_skips_corrupt_files(packed):
  root, result, output, _, _ = packed
  assert (result.total, result.done, result.skipped) == (6, 6, 1)
  assert result.skipped_paths == [str(root / 'videos' / 'corrupt.mp4')]
  assert 'packing train: 1/6 videos' in output and 'packing test: 6/6 videos (100.0%)' in output
  assert 'MiB/s' in output and '1 skipped' in output and 'ETA' in output
  assert 'packed 5 videos' in output and 'corrupt.mp4' in output


def test_tfds_source_matches_the_original_files(packed):
  root, _, _, csv_config, tfds_config = packed
  train = build_source(data_config(**tfds_config), 'train')
  assert len(train) == 3 and train.class_names == ('zero', 'one', 'two')
  for i, (name, label) in enumerate([('c0', 0), ('c1', 1), ('c2', 2)]):
    record = train[i]
    assert isinstance(record.path, VideoBlob) and record.path == f'tfds://tiny_videos/train/{i}'
    assert record.label == label and record.frame_stop == NUM_CLIP_FRAMES
    original = str(root / 'videos' / f'{name}.mp4')
    np.testing.assert_array_equal(decode_video(record.path), decode_video(original))
  # Eval batches through the loader equal those of the CSV source (whose
  # corrupt file the loader skips).
  for split in ('train', 'test'):
    kwargs = dict(split=split, global_batch_size=2, seed=0, train=False)
    from_csv, csv_info = make_loader(data_config(**csv_config), **kwargs)
    from_tfds, _ = make_loader(data_config(**tfds_config), **kwargs)
    assert_batches_equal(take(from_tfds), take(from_csv))
  assert csv_info.skipped.count == 0  # test split: no corrupt file


def test_corrupt_file_in_a_list_is_skipped_by_the_loader(packed):
  root, _, _, csv_config, _ = packed
  ds, info = make_loader(data_config(**csv_config), split='train', global_batch_size=3, seed=0, train=False)
  (batch,) = take(ds)
  assert batch['index'].tolist() == [0, 2, 3] and batch['label'].tolist() == [0, 1, 2]
  assert list(info.skipped.paths) == [str(root / 'videos' / 'corrupt.mp4')]


def test_tfds_records_in_a_worker_process(packed):
  _, _, _, _, tfds_config = packed
  kwargs = dict(split='train', global_batch_size=2, seed=3)
  in_process = take(make_loader(data_config(**tfds_config), **kwargs)[0], 2)
  # The source is pickled to a worker, which reads and decodes the bytes there.
  in_worker = take(make_loader(data_config(num_workers=1, **tfds_config), **kwargs)[0], 2)
  assert_batches_equal(in_worker, in_process, keys=('video', 'label', 'index'))
  # A record pickled with its bytes dropped re-reads them from the source.
  record = build_source(data_config(**tfds_config), 'train')[1]
  copy = pickle.loads(pickle.dumps(record))
  assert copy == record and not copy.path.holds_bytes and len(pickle.dumps(record)) < 20_000
  np.testing.assert_array_equal(decode_frames(copy.path, [2, 7]), decode_frames(record.path, [2, 7]))


def test_pack_command_line_on_a_folder(tmp_path, clips):
  put(tmp_path / 'videos' / 'a' / 'x.mp4', clips['c0.mp4'])
  put(tmp_path / 'videos' / 'b' / 'y.mp4', clips['c2.mp4'])
  data_dir = str(tmp_path / 'tfds')
  args = [
    '--source=folder',
    f'--path={tmp_path / "videos"}',
    '--name=folder_videos',
    f'--data_dir={data_dir}',
  ]
  done = run_module('mvm_jax.tools.pack_videos', *args, timeout=120)
  assert done.returncode == 0, done.stderr
  assert '2/2 videos (100.0%)' in done.stdout and 'packed 2 videos' in done.stdout
  source = build_source(
    data_config(source='tfds', tfds_name='folder_videos', tfds_data_dir=data_dir), 'train'
  )
  assert source.class_names == ('a', 'b') and [r.label for r in source] == [0, 1]
  # Packing again needs --overwrite.
  again = run_module('mvm_jax.tools.pack_videos', *args, timeout=120)
  assert again.returncode != 0 and '--overwrite' in again.stderr


def test_tfds_setting_errors_name_the_key(packed):
  _, _, _, _, tfds_config = packed
  cases = [
    (dict(tfds_video_key='frames'), 'train', 'tfds_video_key', "no feature 'frames'"),
    (dict(tfds_label_key='num_frames'), 'train', 'tfds_label_key', 'not a ClassLabel'),
    ({}, 'validation', 'tfds_name', "split 'validation'"),
  ]
  for overrides, split, key, where in cases:
    with pytest.raises(ValueError, match=f'config.data.{key}') as e:
      build_source(data_config(**tfds_config, **overrides), split)
    assert where in str(e.value), str(e.value)


# --- built-in clips: the whole-video splits ----------------------------------------


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
