"""make_eval_set: a small build's layout, labels, decodability, disjoint digits, determinism, motion."""

import collections
import csv
import json

import numpy as np
import pytest

from mvm_jax.data import decode, default_data_config, pipeline, sources
from mvm_jax.tools import make_eval_set as mes
from tests.conftest import run_module

NUM = {'train': 40, 'test': 20}
SEED = 3
T = 32


@pytest.fixture(scope='module')
def assets():
  return mes.load_assets()


@pytest.fixture(scope='module')
def built(tmp_path_factory, assets):
  """(out dir, info, log lines) of one small build."""
  out = tmp_path_factory.mktemp('eval_set')
  lines = []
  info = mes.build(
    str(out),
    num_train=NUM['train'],
    num_test=NUM['test'],
    seed=SEED,
    num_frames=T,
    report_every_s=0.0,
    assets=assets,
    log=lines.append,
  )
  return out, info, lines


@pytest.fixture(scope='module')
def specs(assets):
  return mes.make_specs(assets, num_train=NUM['train'], num_test=NUM['test'], seed=SEED, num_frames=T)[0]


def _rows(out):
  with open(out / 'clips.csv') as f:
    return list(csv.DictReader(f))


def _list(out, family, split):
  return sources.list_source(
    str(out / family / '{split}.csv'), split, class_names_file=str(out / family / 'class_names.txt')
  )


def test_layout_counts_and_progress(built):
  out, info, lines = built
  for split, n in NUM.items():
    assert sorted(p.name for p in (out / 'videos' / split).iterdir()) == [f'{i:05d}.mp4' for i in range(n)]
    assert info['splits'][split]['num_clips'] == n
    for family in ('appearance', 'motion'):
      assert len(_list(out, family, split)) == n
  assert len(_rows(out)) == sum(NUM.values())
  assert json.loads((out / 'info.json').read_text()) == info
  assert info['params']['seed'] == SEED and info['params']['num_frames'] == T
  from PIL import Image

  with Image.open(out / 'preview.png') as im:
    assert im.size[0] > 8 * 2 * 64 and im.size[1] >= 8 * 2 * 64  # 8 clips x 8 frames, 2x zoom
  # one progress line per clip (report_every_s=0), the last one at 100%, then the summary.
  progress = [line for line in lines if line.startswith('rendering ')]
  assert len(progress) == sum(NUM.values())
  assert progress[-1].startswith(f'rendering test: {sum(NUM.values())}/{sum(NUM.values())} clips (100.0%)')
  assert 'clips/s' in progress[0] and 'ETA' in progress[0]
  assert any(line.startswith(f'wrote {sum(NUM.values())} clips') for line in lines)


def test_labels_balanced(built):
  out, _, _ = built
  rows = _rows(out)
  for split, n in NUM.items():
    split_rows = [r for r in rows if r['split'] == split]
    for family, k in (('appearance', 10), ('motion', 8)):
      counts = np.bincount([int(r[family]) for r in split_rows], minlength=k)
      assert len(counts) == k and counts.sum() == n
      assert counts.max() - counts.min() <= 1, (split, family, counts)
    pairs = collections.Counter((r['appearance'], r['motion']) for r in split_rows)
    assert max(pairs.values()) <= 2  # 40 or 20 clips over 80 pairs: no pair piles up
  # the greedy draw itself on the default sizes: marginals exact, pairs 7 or 8 of 600.
  labels = mes.balanced_labels(600, 10, 8, np.random.default_rng(0))
  assert set(np.bincount(labels[:, 0])) == {60} and set(np.bincount(labels[:, 1])) == {75}
  joint = np.zeros((10, 8), int)
  np.add.at(joint, (labels[:, 0], labels[:, 1]), 1)
  assert joint.min() >= 7 and joint.max() <= 8


def test_label_families_index_the_same_videos(built):
  out, _, _ = built
  rows = {(r['split'], int(r['index'])): r for r in _rows(out)}
  for split in NUM:
    app, mot = _list(out, 'appearance', split), _list(out, 'motion', split)
    assert [r.path for r in app] == [r.path for r in mot]
    for i, (a, m) in enumerate(zip(app, mot)):
      assert a.path == str(out / 'videos' / split / f'{i:05d}.mp4')
      assert (a.label, m.label) == (int(rows[split, i]['appearance']), int(rows[split, i]['motion']))


def test_class_names_files(built):
  out, info, _ = built
  app = sources.read_class_names(str(out / 'appearance' / 'class_names.txt'))
  mot = sources.read_class_names(str(out / 'motion' / 'class_names.txt'))
  assert app.names == mes.DIGIT_NAMES == tuple(info['labels']['appearance']['classes'])
  assert mot.names == tuple(f'{d}_{s}' for d in ('right', 'left', 'down', 'up') for s in ('slow', 'fast'))
  assert mot.names == tuple(info['labels']['motion']['classes'])
  assert _list(out, 'motion', 'test').class_names == mot.names


def test_csv_source_config_with_split_placeholder(built):
  """The documented flags: data.source=csv, data.path=DIR/<family>/{split}.csv, splits train and test."""
  out, _, _ = built
  dc = default_data_config()
  dc.update(
    source='csv',
    path=str(out / 'appearance' / '{split}.csv'),
    class_names_file=str(out / 'appearance' / 'class_names.txt'),
  )
  for split, n in NUM.items():
    source = pipeline.build_video_source(dc, split)
    assert len(source) == n and source.num_classes == 10
    assert all(f'/videos/{split}/' in r.path for r in source)


def test_every_video_decodes_to_the_generated_clip(built, assets, specs):
  out, info, _ = built
  assert info['codec'] in ('libx264', 'mpeg4')
  for split in NUM:
    for record, spec in zip(_list(out, 'appearance', split), specs[split]):
      assert decode.probe_video(record.path).num_frames == T
      video = decode.decode_video(record.path)
      assert video.shape == (T, 64, 64, 3) and video.dtype == np.uint8
      # the seeking decoder the samplers use returns the same frames.
      np.testing.assert_array_equal(decode.decode_frames(record.path, [30, 3, 17]), video[[30, 3, 17]])
      raw = mes.render_clip(spec, assets, T)
      mse = np.mean((video.astype(np.float64) - raw) ** 2)
      assert 10 * np.log10(255**2 / mse) > 28, (record.path, mse)  # the encoded clip is this spec's


def test_specs_match_the_build(built, specs, assets):
  out, _, _ = built
  rows = {(r['split'], int(r['index'])): r for r in _rows(out)}
  for split in NUM:
    for s in specs[split]:
      r = rows[split, s.index]
      assert (int(r['appearance']), int(r['motion']), int(r['digit'])) == (s.appearance, s.motion, s.digit)
      assert int(assets.digit_labels[s.digit]) == s.appearance
      assert r['shots'] == ' '.join(shot.encode(assets.background_names) for shot in s.shots)
      assert [shot.first_frame for shot in s.shots] == list(range(0, T, mes.SHOT_FRAMES))


def test_train_and_test_digit_images_disjoint(built, assets):
  out, info, _ = built
  rows = _rows(out)
  used = {split: {int(r['digit']) for r in rows if r['split'] == split} for split in NUM}
  assert used['train'] and used['test'] and not used['train'] & used['test']
  for split, n in NUM.items():
    assert sorted(used[split]) == info['splits'][split]['digit_images']
    assert len(used[split]) == n  # pools are large enough: no image used twice
  pools = mes.split_digits(assets.digit_labels, 0.3, seed=0)
  assert not set(pools['train']) & set(pools['test'])
  assert len(pools['train']) + len(pools['test']) == len(assets.digits)
  for c in range(10):  # stratified
    assert np.sum(assets.digit_labels[pools['test']] == c) == round(np.sum(assets.digit_labels == c) * 0.3)


def test_generator_is_deterministic(assets):
  def clips(seed):
    s = mes.make_specs(assets, num_train=6, num_test=4, seed=seed, num_frames=T)[0]
    return [mes.render_clip(spec, assets, T) for split in ('train', 'test') for spec in s[split]]

  a, b, c = clips(11), clips(11), clips(12)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not any(np.array_equal(x, y) for x, y in zip(a, c))


def test_motion_is_what_the_label_says(specs, assets):
  """The digit's centroid (pixels that differ from the footage alone) moves as its motion label says."""
  names = mes.motion_class_names()
  unit = {'right': (0, 1), 'left': (0, -1), 'down': (1, 0), 'up': (-1, 0)}
  speed = dict(zip(('slow', 'fast'), mes.DEFAULT_SPEEDS))
  t = np.arange(T)
  for spec in specs['train'] + specs['test']:
    clip = mes.render_clip(spec, assets, T).astype(np.int16)
    background = mes.render_background(spec, assets, T).astype(np.int16)
    mask = np.abs(clip - background).max(-1) > 24  # [T, 64, 64] the digit and its outline
    # the digit never touches the frame's border, so it is fully visible in every frame.
    assert not mask[:, [0, -1], :].any() and not mask[:, :, [0, -1]].any()
    area = mask.sum((1, 2))
    assert area.min() > 40 and area.max() < 1.5 * area.min()  # same glyph in every frame
    yy, xx = np.mgrid[:64, :64]
    cy = (mask * yy).sum((1, 2)) / area
    cx = (mask * xx).sum((1, 2)) / area
    vy, vx = np.polyfit(t, cy, 1)[0], np.polyfit(t, cx, 1)[0]
    direction, pace = names[spec.motion].split('_')
    dy, dx = unit[direction]
    assert vy == pytest.approx(dy * speed[pace], abs=0.1), (spec, vy, vx)
    assert vx == pytest.approx(dx * speed[pace], abs=0.1), (spec, vy, vx)


def test_background_is_a_montage_of_panning_shots(specs, assets):
  """Every SHOT_FRAMES frames a new shot: within a shot, frame t is its footage at the corner
  round(start + v·t) with the pan within BG_PAN_SPEED (or the fastest the footage fits); across
  a shot boundary the footage changes, so frames far apart share only the digit."""
  lo, hi = mes.BG_PAN_SPEED
  boundary_diffs, within_diffs = [], []
  for spec in specs['train'][:20]:
    background = mes.render_background(spec, assets, T).astype(np.int16)
    for k, shot in enumerate(spec.shots):
      length = min(mes.SHOT_FRAMES, T - shot.first_frame)
      speed = float(np.hypot(shot.vy, shot.vx))
      assert speed <= hi + 1e-6
      video = assets.backgrounds[shot.background]
      height, width = video.shape[1:3]
      steps = length - 1
      capped = abs(shot.vy) * steps >= height - 64 - 1 or abs(shot.vx) * steps >= width - 64 - 1
      assert speed >= lo - 1e-6 or capped
      frames = video[shot.start : shot.start + length]
      if shot.reverse:
        frames = frames[::-1]
      t = length - 1
      y, x = round(shot.y + shot.vy * t), round(shot.x + shot.vx * t)
      want = frames[t, y : y + 64, x : x + 64]
      if shot.flip:
        want = want[:, ::-1]
      np.testing.assert_array_equal(background[shot.first_frame + t], want)
      if k:
        boundary_diffs.append(np.abs(background[shot.first_frame] - background[shot.first_frame - 1]).mean())
      within_diffs.append(np.abs(background[shot.first_frame + 1] - background[shot.first_frame]).mean())
  assert np.median(boundary_diffs) > 3 * np.median(within_diffs)


def test_mpeg4_fallback_encoder_round_trips(specs, assets, tmp_path):
  clip = mes.render_clip(specs['test'][0], assets, T)
  path = str(tmp_path / 'clip.mp4')
  mes.encode_mp4(path, clip, codec='mpeg4')
  video = decode.decode_video(path)
  assert video.shape == clip.shape and decode.probe_video(path).num_frames == T
  assert 10 * np.log10(255**2 / np.mean((video.astype(np.float64) - clip) ** 2)) > 28


def test_rerun_conflict_and_overwrite(built, tmp_path, assets):
  out, _, _ = built
  lines = []
  mes.build(str(out), num_train=NUM['train'], num_test=NUM['test'], seed=SEED, num_frames=T, log=lines.append)
  assert lines == [
    f'{out} already holds this evaluation set (info.json matches, all videos present); nothing to do'
  ]
  with pytest.raises(FileExistsError, match='--overwrite'):
    mes.build(str(out), num_train=NUM['train'], num_test=NUM['test'], seed=SEED + 1, num_frames=T)

  small = tmp_path / 'small'
  small.mkdir()
  (small / 'mine.txt').write_text("not the builder's")
  kw = {'num_test': 2, 'seed': 0, 'num_frames': 8, 'speeds': (1.0, 2.0), 'assets': assets}
  mes.build(str(small), num_train=3, log=lambda _: None, **kw)
  (small / 'videos' / 'train' / '00001.mp4').unlink()  # unfinished: not complete any more
  with pytest.raises(FileExistsError):
    mes.build(str(small), num_train=3, log=lambda _: None, **kw)
  info = mes.build(str(small), num_train=4, overwrite=True, log=lambda _: None, **kw)
  assert info['params']['num_train'] == 4
  assert sorted(p.name for p in (small / 'videos' / 'train').iterdir()) == [f'{i:05d}.mp4' for i in range(4)]
  assert (small / 'mine.txt').read_text() == "not the builder's"  # only the builder's outputs are replaced


def test_speed_that_cannot_fit_is_refused(tmp_path):
  with pytest.raises(ValueError, match='fastest speed allowed'):
    mes.build(str(tmp_path), num_train=2, num_test=2, num_frames=16, speeds=(1.0, 3.0))
  assert not any(tmp_path.iterdir())


def test_cli_reports_a_complete_build_and_refuses_other_settings(built):
  out, _, _ = built
  args = ['--out', str(out), f'--num_train={NUM["train"]}', f'--num_test={NUM["test"]}', f'--seed={SEED}']
  result = run_module('mvm_jax.tools.make_eval_set', *args, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'already holds this evaluation set' in result.stdout
  result = run_module('mvm_jax.tools.make_eval_set', *args[:-1], '--seed=9', timeout=120)
  assert result.returncode == 1 and 'pass --overwrite' in result.stderr
